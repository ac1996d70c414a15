"""Reference transcription of NegCLIP's training step with hard negative images, written independently of
training/objectives/negclip.py and training/data.py for agreement tests.

Source: ``vinid/neg_clip`` (an open_clip fork by the ARO authors; newest stored snapshot, commit e680f8e):

* ``src/training/data.py``, ``CsvDataset.__getitem__(idx)`` returns six tensors: the image and caption of row
  ``idx``; ONE hard negative caption drawn with ``random.choice`` from the row's ``neg_caption`` list; the image
  and caption of ONE hard negative image row drawn with ``random.choice`` from the row's ``neg_image`` list (3 row
  indices per row in the released ``valid_neg_clip.tsv``: its nearest COCO images); and ONE hard negative
  caption of *that* row, again ``random.choice`` over its ``neg_caption``. Every row has at least one negative
  caption (the generator drops rows without), so a batch of B always brings B neighbour pairs.
* ``src/training/train.py``, ``train_one_epoch``: the default collate stacks each of the six into (B, ...), then
  ``images = cat([images, new_images])`` (2B) and ``texts = cat([texts, new_texts, hard_captions, new_hard])``
  (4B); the model encodes both (``CLIP.forward``: L2-normalised features).
* ``src/open_clip/loss.py``, ``ClipLoss.forward`` with world_size 1: ``logits_per_image = s * img @ txt.T``
  (2B x 4B), ``logits_per_text = s * txt @ img.T`` (4B x 2B), ``labels = arange(logits_per_image.shape[0])``
  and ``(CE(logits_per_image, labels) + CE(logits_per_text[:len(logits_per_image)], labels)) / 2``.

So row j < 2B of the texts is image j's positive; the negative captions of both blocks are columns of the
image->text softmax only. The authors' README states the code does not support more than one GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def concatenate_reference(images: torch.Tensor, new_images: torch.Tensor, texts: torch.Tensor,
                          new_texts: torch.Tensor, hard_captions: torch.Tensor, new_hard: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``train_one_epoch``'s concatenation: (2B, ...) images and (4B, ...) texts, in the authors' order."""
    all_images = torch.cat([images, new_images])
    all_texts = torch.cat([texts, new_texts])
    all_texts = torch.cat([all_texts, hard_captions])
    all_texts = torch.cat([all_texts, new_hard])
    return all_images, all_texts


def clip_loss_reference(image_features: torch.Tensor, text_features: torch.Tensor,
                        logit_scale: torch.Tensor | float) -> torch.Tensor:
    """``ClipLoss.forward`` on one process: more text rows than image rows, the extra ones never a label."""
    logits_per_image = logit_scale * image_features @ text_features.T
    logits_per_text = logit_scale * text_features @ image_features.T
    labels = torch.arange(logits_per_image.shape[0], dtype=torch.long)
    return (F.cross_entropy(logits_per_image, labels)
            + F.cross_entropy(logits_per_text[:len(logits_per_image)], labels)) / 2


def negclip_step_loss_reference(model: torch.nn.Module, images: torch.Tensor, new_images: torch.Tensor,
                                texts: torch.Tensor, new_texts: torch.Tensor, hard_captions: torch.Tensor,
                                new_hard: torch.Tensor) -> torch.Tensor:
    """One step's loss: concatenate, encode as ``CLIP.forward`` (normalised features, exp of the scale), and
    ``ClipLoss``."""
    all_images, all_texts = concatenate_reference(images, new_images, texts, new_texts, hard_captions, new_hard)
    image_features = model.encode_image(all_images, normalize=True)
    text_features = model.encode_text(all_texts, normalize=True)
    return clip_loss_reference(image_features, text_features, model.logit_scale.exp())
