"""Image captioning (Flickr8k, ViT-GPT2) and unsupervised Chan-Vese image segmentation, written as nbdev notebooks"""

__version__ = "0.0.1"
