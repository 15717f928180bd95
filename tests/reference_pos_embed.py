"""Literal transcriptions of the reference codebases' positional-embedding resampling calls (each cites its
source), shared by the tests that compare against them. Their code is kept as written there."""

import math

import torch
import torch.nn.functional as F
from torch import nn


def naclip_interpolate_pos_encoding(positional_embedding, patch_size, x, w, h):
    # sinahmr/NACLIP clip/model.py VisionTransformer.interpolate_pos_encoding (SCLIP, ClearCLIP: identical)
    npatch = x.shape[1] - 1
    N = positional_embedding.shape[0] - 1
    if npatch == N and w == h:
        return positional_embedding
    class_pos_embed = positional_embedding[[0]]
    patch_pos_embed = positional_embedding[1:]
    dim = x.shape[-1]
    w0 = w // patch_size
    h0 = h // patch_size
    w0, h0 = w0 + 0.1, h0 + 0.1
    patch_pos_embed = nn.functional.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        mode='bicubic',
    )
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def naclip_positional_term(positional_embedding, patch_size, images, x):
    # sinahmr/NACLIP clip/model.py VisionTransformer.forward: `B, nc, w, h = x.shape` (w = rows) and
    # `if x.shape[1] != self.positional_embedding.shape[0]: x + self.interpolate_pos_encoding(x, w, h)`
    B, nc, w, h = images.shape
    if x.shape[1] != positional_embedding.shape[0]:
        return naclip_interpolate_pos_encoding(positional_embedding, patch_size, x, w, h).to(x.dtype)[0]
    return positional_embedding.to(x.dtype)


def student_clip_interpolate_pos_encoding(pos_embed, w, h, resolution, patch_size):
    # 0raiser0/PH-Reg CLIP/zero_shot/models/student_CLIP.py StudentCLIP.interpolate_pos_encoding
    if len(pos_embed.shape) == 3:
        pos_embed = pos_embed.squeeze(0)
    npatch = resolution[0] // patch_size
    N = pos_embed.shape[0] - 1
    if npatch == N and w == h:
        return pos_embed
    class_pos_embed = pos_embed[[0]]
    patch_pos_embed = pos_embed[1:]
    dim = pos_embed.shape[-1]
    w0 = w // patch_size
    h0 = h // patch_size
    w0, h0 = w0 + 0.1, h0 + 0.1
    patch_pos_embed = nn.functional.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2), mode='bicubic',
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)), align_corners=False, recompute_scale_factor=False
    )
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def clip_reg_upsampling_pos_embedding(positional_embedding, image_shape, patch_size):
    # 0raiser0/PH-Reg models/OpenaiMaskCLIP/clip_reg.py ModifiedImageEncoder.upsampling_pos_embedding
    old_patch_pos_embed = positional_embedding.clone()
    patch_pos_embed = old_patch_pos_embed[1:]
    num_patches, hidden_size = patch_pos_embed.shape
    patches = int(math.sqrt(num_patches))
    assert patches ** 2 == num_patches
    patch_pos_embed_2d = patch_pos_embed.reshape(-1, patches, patches, hidden_size).permute(0, 3, 1, 2)
    patch_pos_embed_v2 = F.interpolate(
        patch_pos_embed_2d,
        size=(image_shape[0] // patch_size, image_shape[1] // patch_size),
        mode='bicubic',
        align_corners=False,
        recompute_scale_factor=False
    )
    flat = patch_pos_embed_v2.permute(0, 2, 3, 1).view(1, -1, hidden_size)
    return torch.cat([old_patch_pos_embed[:1], flat[0]], dim=0)


def maskclip_resize_pos_embed(pos_embed, input_shpae, pos_shape, mode):
    # chongzhou96/MaskCLIP mmseg/models/backbones/vit.py VisionTransformer.resize_pos_embed (mode='bicubic' in
    # configs/_base__/models/maskclip_vit16.py); mmseg's `resize` is F.interpolate(input, size, None, mode, ...)
    pos_h, pos_w = pos_shape
    cls_token_weight = pos_embed[:, 0]
    pos_embed_weight = pos_embed[:, (-1 * pos_h * pos_w):]
    pos_embed_weight = pos_embed_weight.reshape(
        1, pos_h, pos_w, pos_embed.shape[2]).permute(0, 3, 1, 2)
    pos_embed_weight = F.interpolate(pos_embed_weight, input_shpae, None, mode, False)
    cls_token_weight = cls_token_weight.unsqueeze(1)
    pos_embed_weight = torch.flatten(pos_embed_weight, 2).transpose(1, 2)
    pos_embed = torch.cat((cls_token_weight, pos_embed_weight), dim=1)
    return pos_embed


def dinov2_interpolate_pos_encoding(pos_embed, patch_size, interpolate_offset, interpolate_antialias, x, w, h):
    # facebookresearch/dinov2 dinov2/models/vision_transformer.py DinoVisionTransformer.interpolate_pos_encoding;
    # hub/backbones.py: offset 0.1, antialias False without registers; offset 0.0, antialias True for *_reg
    previous_dtype = x.dtype
    npatch = x.shape[1] - 1
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    pos_embed = pos_embed.float()
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = x.shape[-1]
    w0 = w // patch_size
    h0 = h // patch_size
    M = int(math.sqrt(N))
    assert N == M * M
    kwargs = {}
    if interpolate_offset:
        sx = float(w0 + interpolate_offset) / M
        sy = float(h0 + interpolate_offset) / M
        kwargs["scale_factor"] = (sx, sy)
    else:
        kwargs["size"] = (w0, h0)
    patch_pos_embed = nn.functional.interpolate(
        patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2),
        mode="bicubic",
        antialias=interpolate_antialias,
        **kwargs,
    )
    assert (w0, h0) == patch_pos_embed.shape[-2:]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(previous_dtype)


def hf_dinov2_4372_interpolate_pos_encoding(position_embeddings, patch_size, embeddings, height, width):
    # huggingface/transformers v4.37.2 (pinned in 0raiser0/PH-Reg README) models/dinov2/modeling_dinov2.py
    # Dinov2Embeddings.interpolate_pos_encoding; forward passes `batch_size, _, height, width = pixel_values.shape`.
    # (The float32 round trip of PR #28504 is the identity on float32 tables.)
    num_patches = embeddings.shape[1] - 1
    num_positions = position_embeddings.shape[1] - 1
    if num_patches == num_positions and height == width:
        return position_embeddings
    class_pos_embed = position_embeddings[:, 0]
    patch_pos_embed = position_embeddings[:, 1:]
    dim = embeddings.shape[-1]
    height = height // patch_size
    width = width // patch_size
    height, width = height + 0.1, width + 0.1
    patch_pos_embed = patch_pos_embed.reshape(1, int(math.sqrt(num_positions)), int(math.sqrt(num_positions)), dim)
    patch_pos_embed = patch_pos_embed.permute(0, 3, 1, 2)
    target_dtype = patch_pos_embed.dtype
    patch_pos_embed = nn.functional.interpolate(
        patch_pos_embed.to(dtype=torch.float32),
        scale_factor=(float(height / math.sqrt(num_positions)), float(width / math.sqrt(num_positions))),
        mode="bicubic",
        align_corners=False,
    ).to(dtype=target_dtype)
    if int(height) != patch_pos_embed.shape[-2] or int(width) != patch_pos_embed.shape[-1]:
        raise ValueError("Width or height does not match with the interpolated position embeddings")
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)
