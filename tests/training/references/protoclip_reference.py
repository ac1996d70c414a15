"""Independent single-process transcription of the authors' ProtoCLIP prototype-level loss, for tests.

Source: github.com/megvii-research/protoclip, commit fde193381369380bd6ffe278d644d85717e01a80 (2023-11-08).
Rewritten here in our own words from these pieces of that commit:

* ``src/training/loss.py``, ``ProtoLoss.forward(student_features, student_centroids, teacher_centroids,
  logit_scale_student, teacher_temperature, labels)``: student scores are
  ``logit_scale_student * student_features @ student_centroids.T``; when ``teacher_temperature > 0`` the target
  is ``softmax(teacher_centroids[labels] @ teacher_centroids.T / teacher_temperature)`` (soft labels), otherwise
  the hard ``labels``; the loss is ``nn.CrossEntropyLoss(ignore_index=-1)`` (batch mean) of scores vs target.
  (It also returns a top-1 accuracy, not transcribed.)
* ``src/training/clustering.py``, ``Clustering.PBT(k, teacher_labels, student_features)``: row c of the
  translated prototypes is the mean of the student-modality features of the episode samples whose
  teacher-modality label is c; clusters without samples stay zero.
* ``src/training/main.py`` (episode set-up, ~l.400): image classifier = PBT(text_labels, img_feature),
  text classifier = PBT(img_labels, text_feature); external teacher likewise from ``external_labels``.
* ``src/training/train.py``, ``train_one_epoch`` (~l.151-186): with ``--PBT`` the image student uses
  ``img_centroids_translated_from_text_prototypes``, the text student
  ``text_centroids_translated_from_image_prototypes``; without it ``text_centroids`` / ``img_centroids``.
  Image term: teacher_centroids = text_centroids, labels = text_labels; text term: teacher_centroids =
  img_centroids, labels = img_labels; both with ``target_temperature``. ``L_proto = 0.5 * (img2text +
  text2img)``; external ``L_proto_external = 0.5 * (img2external + text2external)`` always with
  teacher_temperature=-1 (one-hot) against the back-translated external prototypes;
  ``total = w_clip * L_clip + w_proto * L_proto + w_proto_external * L_proto_external``.
* ``src/open_clip/model.py``, ``CLIP.__init__`` / ``forward_projection``: ``logit_scale_proto`` is initialised to
  ``log(1/0.07)`` and the model returns ``logit_scale_proto.exp()`` (the parameter is clamped to [0, ln 100]
  after each optimiser step in train.py, not inside the loss); projected features are L2-normalised after the
  projection head, which reads the *un-normalised* encoder output.
* ``src/training/params.py`` defaults: ``--target-temperature -1`` (one-hot), ``--PBT`` off,
  ``--w-proto 0``, ``--w-proto-external 0``, ``--k 20000``, ``--projection-dim 128``. The README's ProtoCLIP
  recipe uses ``--target-temperature 0.01 --PBT --w-proto 1 --w-proto-external 1``.

Ambiguities / notes:

* ``CrossEntropyLoss(ignore_index=-1)`` with probability targets ignores ``ignore_index`` (PyTorch only applies
  it to class-index targets); labels are never -1 in their code, so both cases are a plain batch mean.
* The authors compute the loss on features all-gathered across ranks (``gather_features``); with equal local
  batches the value equals the single-process loss on the global batch, which is what this function gives.
* faiss centroids are used as-is (not re-normalised) both as teacher prototypes and, without PBT, as
  classifiers; PBT means are not re-normalised either.
* Which default temperature is "the authors'" is ambiguous: argparse says -1 (one-hot), the README's
  reported recipe 0.01. This function defaults to the argparse value; pass 0.01 for the paper recipe.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUTHORS_LOGIT_SCALE_PROTO_INIT = math.log(1 / 0.07)
"""Initial value of the authors' learnable ``logit_scale_proto`` parameter (before exp)."""


def pbt_reference(k: int, teacher_labels: torch.Tensor, student_features: torch.Tensor) -> torch.Tensor:
    """(k, D): per teacher cluster, the mean of the student's episode features in it (zeros if empty)."""
    out = torch.zeros(k, student_features.shape[1], dtype=student_features.dtype)
    for c in torch.unique(teacher_labels).tolist():
        out[c] = student_features[teacher_labels == c].mean(dim=0)
    return out


def proto_loss_reference(student_features: torch.Tensor, student_centroids: torch.Tensor,
                         teacher_centroids: torch.Tensor, logit_scale_student: torch.Tensor | float,
                         teacher_temperature: float, labels: torch.Tensor) -> torch.Tensor:
    """One direction of the authors' ProtoLoss: CE(scale * z @ P^T, soft-or-hard target from the teacher)."""
    scores = logit_scale_student * student_features @ student_centroids.T  # (B, K)
    if teacher_temperature > 0:
        sims = teacher_centroids[labels] @ teacher_centroids.T / teacher_temperature
        return F.cross_entropy(scores, sims.softmax(dim=1))
    return F.cross_entropy(scores, labels)


def protoclip_prototype_loss_reference(
        image_features_projected: torch.Tensor,
        text_features_projected: torch.Tensor,
        img_labels: torch.Tensor,
        text_labels: torch.Tensor,
        img_centroids: torch.Tensor,
        text_centroids: torch.Tensor,
        logit_scale_proto: torch.Tensor | float = 1 / 0.07,  # exp(AUTHORS_LOGIT_SCALE_PROTO_INIT)
        target_temperature: float = -1.0,
        pbt: bool = False,
        img_centroids_translated_from_text_prototypes: torch.Tensor | None = None,
        text_centroids_translated_from_image_prototypes: torch.Tensor | None = None,
        external_labels: torch.Tensor | None = None,
        external_centroids: torch.Tensor | None = None,
        img_centroids_translated_from_external_prototypes: torch.Tensor | None = None,
        text_centroids_translated_from_external_prototypes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_proto, L_proto_external) of one batch as the authors' train_one_epoch computes them.

    Features: (B, P) L2-normalised projected features of the batch. Labels: (B,) cluster of each batch row
    (the episode's labels already indexed by the batch's episode positions). Centroids / translated
    prototypes: (K, P) for the episode. ``logit_scale_proto`` is the already-exponentiated scale.
    L_proto_external is 0 when no external teacher is given. Combine as w_proto * L + w_ext * L_ext.
    """
    if pbt:
        img_target = img_centroids_translated_from_text_prototypes
        text_target = text_centroids_translated_from_image_prototypes
    else:
        img_target, text_target = text_centroids, img_centroids
    img2text = proto_loss_reference(image_features_projected, img_target, text_centroids, logit_scale_proto,
                                    target_temperature, text_labels)
    text2img = proto_loss_reference(text_features_projected, text_target, img_centroids, logit_scale_proto,
                                    target_temperature, img_labels)
    loss = 0.5 * (img2text + text2img)
    if external_labels is None:
        return loss, torch.zeros(())
    img2ext = proto_loss_reference(image_features_projected, img_centroids_translated_from_external_prototypes,
                                   external_centroids, logit_scale_proto, -1, external_labels)
    text2ext = proto_loss_reference(text_features_projected, text_centroids_translated_from_external_prototypes,
                                    external_centroids, logit_scale_proto, -1, external_labels)
    return loss, 0.5 * (img2ext + text2ext)
