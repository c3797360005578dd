"""placeholder, filled below"""

TIMM_MODELS = (
    "timm:resnet50",
    "timm:resnext50_32x4d",
    "timm:efficientnet_b0",
    "timm:tf_efficientnetv2_b0",
    "timm:mobilenetv3_large_100",
    "timm:mobilenetv4_conv_small",
    "timm:mobilenetv4_hybrid_medium",
    "timm:convnext_atto",
    "timm:convnextv2_atto",
    "timm:regnety_002",
    "timm:vit_small_patch16_224",
    "timm:vit_small_patch14_reg4_dinov2",
    "timm:deit_tiny_distilled_patch16_224",
    "timm:deit3_small_patch16_224",
    "timm:swin_tiny_patch4_window7_224",
    "timm:swinv2_tiny_window8_256",
    "timm:beit_base_patch16_224",
    "timm:eva02_tiny_patch14_224",
    "timm:efficientformer_l1",
    "timm:efficientformerv2_s0",
    "timm:fastvit_t8",
    "timm:levit_128s",
    "timm:maxvit_tiny_tf_224",
    "timm:coatnet_0_rw_224",
    "timm:repvit_m0_9",
    "timm:ghostnet_100",
    "timm:densenet121",
    "timm:inception_v3",
    "timm:mobilevit_xxs",
    "timm:edgenext_xx_small",
    "timm:poolformer_s12",
    "timm:caformer_s18",
    "timm:pvt_v2_b0",
    "timm:tiny_vit_5m_224",
    "timm:hgnetv2_b0",
    "timm:nfnet_l0",
)


def torchvision_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


FIXED_SIZE = ("torchvision:vit_", "torchvision:maxvit_")  # these take 224x224 only


def input_size_for(spec: str, small: bool = False) -> int:
    """224 for torchvision (every classifier accepts it); timm's configured size for timm.
    ``small``: 64 where the model takes any size (enough to enumerate its operators)."""
    family, _, name = spec.partition(":")
    if small and family == "torchvision" and not spec.startswith(FIXED_SIZE):
        return 96 if name == "inception_v3" else 64
    if family == "timm":
        import timm

        return int(timm.get_pretrained_cfg(name).input_size[-1]) if timm.get_pretrained_cfg(name) else 224
    return 224
