"""The caption names the kind of product CLIP sees. With a knowledge base that lists kinds (fruit: apple, pear, ...),
a caption that opens as the summarizer's sentences do ("A lemon with", "A fresh lemon with", "A lemon that may
have") but with another kind than CLIP's likeliest gets CLIP's: the app's Kind line and the caption never
disagree, and CLIP's kind is right more often than the LM's (python -m demo.captions). Any other caption is left
as written: a free-form one (a captioner trained on human captions) may mention a fruit for other reasons.

The swap is made in the written caption, not by keeping the LM from writing other kinds while it decodes: the LM
reads kind and condition from the same prefix, and a kind forced on it rewrote the condition too (15 of 400
held-out captions changed, several to another condition: "A lemon with wrinkled shrivelled skin and a cut in the
skin." -> "A brown bruise, wrinkled shrivelled skin and a cut in the skin.")."""
from utils.summarizer import MODES, opening


def name_kind(caption, knowledge, kind):
    """`caption` with the summarizer's opening of another kind replaced by the same opening of `kind` (a Kind)."""
    for other in knowledge.kinds:
        for mode in MODES if other.noun != kind.noun else ():
            written = opening(other.noun, mode, knowledge.healthy_word)
            if caption.lower().startswith(written.lower() + " "):
                named = opening(kind.noun, mode, knowledge.healthy_word)
                return (named if caption[0].isupper() else named[0].lower() + named[1:]) + caption[len(written):]
    return caption


def kind_probabilities(clip, embeddings, knowledge):
    """[n, kinds] CLIP softmax over the knowledge base's kind prompts for image embeddings [n, d] (None without
    kinds): the auto-labels and the operators' corrections name the likeliest."""
    if not knowledge.kinds:
        return None
    import torch

    with torch.no_grad():
        return clip.logits(embeddings.to(clip.device), knowledge.kind_sentences()).softmax(dim=-1).float().cpu()


def likeliest_kinds(clip, embeddings, knowledge):
    """CLIP's likeliest Kind for each image embedding [n, d]; None for each without kinds."""
    probabilities = kind_probabilities(clip, embeddings, knowledge)
    if probabilities is None:
        return [None] * len(embeddings)
    return [knowledge.kinds[i] for i in probabilities.argmax(dim=1).tolist()]
