"""The caption names the kind of product CLIP sees. With a knowledge base that lists kinds (fruit: apple, pear, ...),
a caption naming another kind than CLIP's likeliest one gets CLIP's: the app's Kind line and the caption never
disagree, and CLIP's kind is right more often than the LM's (python -m demo.captions).

The swap is made in the written caption, not by keeping the LM from writing other kinds while it decodes: the LM
reads kind and condition from the same prefix, and a kind forced on it rewrote the condition too (15 of 400
held-out captions changed, several to another condition: "A lemon with wrinkled shrivelled skin and a cut in the
skin." -> "A brown bruise, wrinkled shrivelled skin and a cut in the skin.")."""
import re

from utils.knowledge import indefinite_article


def name_kind(caption, knowledge, kind):
    """`caption` with every other kind's noun replaced by `kind`'s (a Kind), its article made to fit; a noun that is
    also a word of the knowledge base's descriptions (e.g. a colour) is left as written."""
    words = {word.lower() for prompt in knowledge.prompts for word in re.findall(r"\w+", prompt.text)}
    others = sorted({k.noun for k in knowledge.kinds} - {kind.noun} - words, key=len, reverse=True)
    if not others:
        return caption
    pattern = rf"\b(?:(an?)(\s+))?({'|'.join(map(re.escape, others))})\b"

    def swap(match):
        article, space, written = match.groups()
        noun = kind.noun.capitalize() if written[0].isupper() else kind.noun
        if article is None:
            return noun
        fitting = indefinite_article(noun) or article.lower()
        return (fitting.capitalize() if article[0].isupper() else fitting) + space + noun

    return re.sub(pattern, swap, caption, flags=re.IGNORECASE)
