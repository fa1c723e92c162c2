"""Token-level forward of a timm VisionTransformer student with iBOT masking or MSN token dropping.

timm's `forward_features` is patch_embed -> _pos_embed (prefix tokens + positions) -> patch_drop ->
norm_pre -> blocks -> norm. We split it where the two methods corrupt the input:
- iBOT (models/vision_transformer.py `prepare_tokens` / `mask_model`): masked *patch embeddings*
  are replaced by a learnable mask token before the positional embedding is added;
- MSN (src/deit.py `forward_features`): positions are added first, then only the kept patch tokens
  (and always the class token) enter the blocks.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

__all__ = ["add_mask_token", "forward_token_views", "require_vit", "vit_patch_size", "vit_tokens"]


def require_vit(backbone: nn.Module, method: str) -> VisionTransformer:
    """The student's timm ViT, or a one-line error naming the fix (a runtime guard: the `vit_student` need
    of `rob_ray.methods.needs` refuses such a student before launch)."""
    if not isinstance(backbone, VisionTransformer) or backbone.cls_token is None:
        from rob_ray.errors import ConfigError

        raise ConfigError(
            f"config error: method.name={method} needs a ViT student with a class token "
            f"(timm VisionTransformer, e.g. student.arch=vit_small_patch16_224), got {type(backbone).__name__}"
        )
    return backbone


def vit_patch_size(vit: VisionTransformer) -> tuple[int, int]:
    ps = vit.patch_embed.patch_size
    return (int(ps[0]), int(ps[1])) if isinstance(ps, tuple | list) else (int(ps), int(ps))


def add_mask_token(student: nn.Module) -> nn.Parameter:
    """Register iBOT's learnable mask token (zeros, like iBOT's `masked_embed`) on the student so
    that the loop's optimiser, DDP and checkpoints include it. Idempotent."""
    if getattr(student, "mask_token", None) is None:
        ref = student.backbone.cls_token  # same device and dtype as the (possibly moved) student
        student.register_parameter("mask_token", nn.Parameter(torch.zeros(1, ref.shape[-1], device=ref.device,
                                                                          dtype=ref.dtype)))
    return student.mask_token


def vit_tokens(vit: VisionTransformer, x: torch.Tensor, mask: torch.Tensor | None = None,
               mask_token: torch.Tensor | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 3, H, W) -> (N, prefix + P', D) final-norm tokens (prefix = class (+ register) tokens).

    mask: (N, h, w) or (N, h * w) bool, True = replace that patch embedding by `mask_token` (1, D).
    keep: (T,) patch indices kept after the positional embedding (MSN); P' = T, else P = h * w.
    """
    x = vit.patch_embed(x)  # (N, h, w, D) with dynamic_img_size, else (N, P, D)
    if mask is not None:
        if mask_token is None:
            raise ValueError("a mask needs a mask token (call add_mask_token on the student)")
        shape = x.shape
        flat = x.reshape(shape[0], -1, shape[-1])
        m = mask.reshape(shape[0], -1, 1).to(flat.device)
        if m.shape[1] != flat.shape[1]:
            raise ValueError(f"mask has {m.shape[1]} patches but the image has {flat.shape[1]}")
        # torch.where, not in-place assignment: the mask token gets a gradient and DDP sees it used.
        x = torch.where(m, mask_token.to(flat.dtype).view(1, 1, -1), flat).reshape(shape)
    x = vit._pos_embed(x)
    if keep is not None:
        prefix = vit.num_prefix_tokens
        x = torch.cat([x[:, :prefix], x[:, prefix:].index_select(1, keep.to(x.device))], dim=1)
    x = vit.patch_drop(x)
    x = vit.norm_pre(x)
    x = vit.blocks(x)
    return vit.norm(x)


def forward_token_views(student: nn.Module, crops: list[torch.Tensor], global_mask: torch.Tensor | None = None,
                        global_keep: torch.Tensor | None = None, return_patches: bool = False):
    """Student forward when the first crop group (the global views) is corrupted.

    crops[0]: (G * B, 3, S, S) globals; crops[1:]: local groups, embedded as usual (never corrupted).
    Returns the head outputs (V * B, K) of the class tokens; with `return_patches` also the head
    outputs of the *masked* patch tokens only, (M, K) in `global_mask[global_mask]` order (iBOT's
    patch loss reads nothing else, so the shared head skips the visible patches).
    """
    vit = require_vit(student.backbone, "ibot/msn")
    tokens = vit_tokens(vit, crops[0], mask=global_mask, mask_token=getattr(student, "mask_token", None),
                        keep=global_keep)
    cls = vit.forward_head(tokens, pre_logits=True)  # the same pooling as `student.embed`
    rows = [cls] + [student.embed(c) for c in crops[1:]]
    n_cls = sum(r.shape[0] for r in rows)
    if return_patches:
        if global_mask is None:
            raise ValueError("return_patches needs global_mask")
        patches = tokens[:, vit.num_prefix_tokens:]
        rows.append(patches[global_mask.reshape(patches.shape[0], -1).to(patches.device)])
    out = student.head(torch.cat(rows))  # one head call: CLS and patch tokens share the head (iBOT)
    if return_patches:
        return out[:n_cls], out[n_cls:]
    return out
