"""A supervised UNet: the ceiling the mask-free methods are measured against (bench only: it trains on the masks).

UNet with skip connections, two 3×3 conv + BatchNorm + ReLU blocks per level, channels 32/64/128 (two 2× max-pool
steps down, bilinear 2× up + concatenation of the encoder's features on the way back), one logit per pixel.
Loss: binary cross-entropy + soft Dice (per batch). AdamW lr 1e-3, weight decay 1e-4, batch 32, the learning rate
cut ×0.3 after 3 epochs without a lower validation loss, early stop after `patience` such epochs, at most `epochs`
epochs; the weights of the epoch with the lowest validation loss are kept. The validation split is 10 % of the
TRAIN images (seeded), so no test image steers anything. Augmentation: a random flip/rotation by multiples of 90°
per image (the dihedral group, as capseg's default). Inputs are standardised by the train images' mean and std.
Scored as the sweep scores every method: `capseg.segment.score` (flip-invariant IoU, flip chosen per batch of 32).
"""
import copy, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from capseg.segment import conv_bn_relu, cpu_threads, flip_ious, pad_to_multiple, score

WIDTHS = (32, 64, 128)


def double_conv(cin: int, cout: int) -> nn.Sequential:
    "Two 3×3 conv + BatchNorm + ReLU."
    return nn.Sequential(conv_bn_relu(cin, cout), conv_bn_relu(cout, cout))


class UNet(nn.Module):
    "A UNet with `widths` channels per level (one 2× max-pool between levels), skip connections, logits out."
    def __init__(self, widths=WIDTHS):
        super().__init__()
        self.multiple = 2 ** (len(widths) - 1)
        self.down = nn.ModuleList([double_conv(cin, cout) for cin, cout in zip((1,) + widths[:-1], widths)])
        self.up = nn.ModuleList([double_conv(widths[i] + widths[i + 1], widths[i]) for i in range(len(widths) - 1)])
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x):
        h, w = x.shape[-2:]
        x, skips = pad_to_multiple(x, self.multiple), []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for i in range(len(self.up) - 1, -1, -1):
            x = F.interpolate(x, size=skips[i].shape[-2:], mode='bilinear', align_corners=False)
            x = self.up[i](torch.cat([skips[i], x], 1))
        return self.head(x)[..., :h, :w]


def bce_dice_loss(logits: torch.Tensor, masks: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    "Binary cross-entropy + (1 − soft Dice) over the batch."
    p = torch.sigmoid(logits)
    dice = (2 * (p * masks).sum() + eps) / (p.sum() + masks.sum() + eps)
    return F.binary_cross_entropy_with_logits(logits, masks) + 1 - dice


def dihedral(x: torch.Tensor, m: torch.Tensor, gen: torch.Generator):
    "Each image of `x` and its mask of `m` (N×1×H×W) flipped and rotated by one of the 8 dihedral transforms."
    k = torch.randint(8, (len(x),), generator=gen)
    square = x.shape[-1] == x.shape[-2]
    x, m = x.clone(), m.clone()
    for t in range(1, 8):
        i = (k == t).nonzero()[:, 0]
        if not len(i): continue
        xs, ms = x[i], m[i]
        if t >= 4: xs, ms = xs.flip(-1), ms.flip(-1)
        turns = t % 4 if square else 2 * (t % 2)
        x[i], m[i] = torch.rot90(xs, turns, (-2, -1)), torch.rot90(ms, turns, (-2, -1))
    return x, m


def _epoch_loss(net, x, m, batch_size: int) -> float:
    net.eval()
    with torch.inference_mode():
        losses = [bce_dice_loss(net(x[i:i + batch_size]), m[i:i + batch_size]).item() * len(x[i:i + batch_size])
                  for i in range(0, len(x), batch_size)]
    net.train()
    return sum(losses) / len(x)


def train_unet(images, masks, *, epochs: int = 60, seed: int = 0, threads: int = 1, patience: int = 8,
               batch_size: int = 32, lr: float = 1e-3, val_share: float = 0.1, widths=WIDTHS, log=None):
    """Train a UNet on `images` (N×H×W) and their `masks` (label images: foreground = label > 0); returns
    `(predict, record)`: `predict(images) -> N×H×W probabilities` and a dict of what the training did."""
    t0 = time.perf_counter()
    with cpu_threads(threads):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        x = torch.as_tensor(np.asarray(images, dtype=np.float32))[:, None]
        m = torch.as_tensor(np.asarray(masks) > 0, dtype=torch.float32)[:, None]
        mean, std = float(x.mean()), float(x.std()) or 1.0
        x = (x - mean) / std
        perm = torch.randperm(len(x), generator=gen)
        n_val = max(1, round(val_share * len(x)))
        val, fit = perm[:n_val], perm[n_val:]
        net = UNet(tuple(widths))
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.3, patience=3)
        best, history = dict(loss=float('inf'), epoch=0, state=None), []
        for epoch in range(1, epochs + 1):
            order = fit[torch.randperm(len(fit), generator=gen)]
            for i in range(0, len(order), batch_size):
                xb, mb = dihedral(x[order[i:i + batch_size]], m[order[i:i + batch_size]], gen)
                loss = bce_dice_loss(net(xb), mb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            val_loss = _epoch_loss(net, x[val], m[val], 4 * batch_size)
            sched.step(val_loss)
            history.append(round(val_loss, 5))
            if log: log(f'unet epoch {epoch}: validation loss {val_loss:.4f}')
            if val_loss < best['loss']:
                best = dict(loss=val_loss, epoch=epoch, state=copy.deepcopy(net.state_dict()))
            elif epoch - best['epoch'] >= patience: break
        net.load_state_dict(best['state'])
        net.eval()
    record = dict(epochs=epoch, best_epoch=best['epoch'], val_loss=best['loss'], val_images=n_val,
                  train_images=len(fit), train_seconds=time.perf_counter() - t0, widths=list(widths),
                  val_loss_history=history, parameters=sum(p.numel() for p in net.parameters()))

    def predict(images, batch_size: int = 256) -> np.ndarray:
        "Foreground probabilities (N×H×W) of `images` in the training images' units."
        xs = (torch.as_tensor(np.asarray(images, dtype=np.float32))[:, None] - mean) / std
        with cpu_threads(threads), torch.inference_mode():
            p = torch.cat([torch.sigmoid(net(xs[i:i + batch_size])) for i in range(0, len(xs), batch_size)])
        return p[:, 0].numpy()
    predict.net = net
    return predict, record


def iou_scores(prob, masks) -> dict:
    "Flip-invariant test IoU (%) of probabilities `prob` (N×H×W) against `masks` (label > 0), as the sweep scores."
    p = torch.as_tensor(np.asarray(prob, dtype=np.float32))[:, None]
    s = score(torch.zeros_like(p), p, np.asarray(masks) > 0, 0.0)
    each = torch.maximum(*flip_ious(p, torch.as_tensor(np.asarray(masks) > 0)[:, None]))
    return dict(test_iou=s['iou_batch_level'], test_iou_per_image=s['iou_per_image'],
                iou_each_image=[round(100 * v, 2) for v in each.tolist()])


def run_unet(image_train, mask_train, image_test, mask_test, *, epochs: int = 60, seed: int = 0, threads: int = 1,
             patience: int = 8, log=None) -> dict:
    "Train on the train split and score on the test split; the record (IoU in %, seconds, images/s, test `prob`)."
    predict, record = train_unet(image_train, mask_train, epochs=epochs, seed=seed, threads=threads, patience=patience,
                                 log=log)
    t = time.perf_counter()
    prob = predict(image_test)
    speed = len(prob) / (time.perf_counter() - t)
    return iou_scores(prob, mask_test) | record | dict(inference_images_per_s=speed, prob=prob)
