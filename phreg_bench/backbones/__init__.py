"""Backbones: any ViT behind one dense-feature contract (:class:`~phreg_bench.backbones.base.Backbone`).

==========================  ===========================================================================
``base``                    the contract: ``Backbone``, ``BackboneIdentity``, ``TextTower``
``build``                   ``build_backbone(name, ...)``: the one construction path (lookup, type check, naming)
``catalogue``               named entries (metadata readable without building) and ``timm:`` /
                            ``open_clip:`` / ``hf-hub:`` pass-through prefixes
``timm_backbones``          timm ``VisionTransformer`` factory (DINOv2 ± registers, DeiT, DeiT-III, AugReg…)
``open_clip_backbones``     open_clip CLIP-ViT factory (OpenAI, LAION, DFN, MetaCLIP…) with its text tower
``open_clip_text``          batched text encoding, context cut at the longest prompt (exact)
``weights``                 weights resolution (``--weights`` / ``--random-init`` / hub), safe reading of local
                            weight files, sha256 fingerprints
``torchscript_archive``     tensors of OpenAI's TorchScript checkpoints without running TorchScript
``hub``                     Hugging Face downloads: cache first, fast clear failure offline
``builtin``                 the offline built-in ``tiny-vit``
==========================  ===========================================================================

The built-in ``planted-vit`` / ``planted-vit-twin`` (the synthetic world's ground truth) are catalogued here
and built by :mod:`phreg_bench.synthetic.planted`. Third-party backbones: see ``examples/third_party_backbone``.
"""
