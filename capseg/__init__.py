"""Image captioning (Flickr8k, ViT-GPT2) and unsupervised Chan-Vese image segmentation, written as nbdev notebooks

Modules:

- `capseg.segment`: Unsupervised segmentation with a Chan–Vese loss: networks, loss, flip-invariant IoU, paired augmentation, training with resume, evaluation, prediction and a blur + Otsu baseline."""

__version__ = "0.0.1"
