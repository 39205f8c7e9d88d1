"""The offline demo: a synthetic fruit world with defect masks, a small CLIP pretrained on it, and the bundle
the product's own scripts build from them. No pretrained CLIP can be had offline, so the project makes one;
because the world has known labels and masks, the demo is also the project's measuring instrument.

    python -m demo.build       # `make demo`: checkpoints/demo from demo/recipe.yaml
    python -m demo.world       # a synthetic world on its own
    python -m demo.evaluate    # quality on a held-out world (labels, captions, explanations)

The product never imports this package: the app serves checkpoints/demo like any other bundle.
"""
