"""The model lists that peer projects test their own ONNX export on (`zoo_sweep.py --list`).

Coverage of a seeded random sample says how much of a zoo converts; these lists say whether
the models other deployment tools promise are among it. Each list keeps the ids of its
source's own registry (`pipeline.py list-models SOURCE`), in the list's own order, and where
it was read from.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PeerList:
    source: str
    origin: str          # where the list was read from
    model_ids: tuple[str, ...]


PEER_LISTS: dict[str, PeerList] = {
    # mmdeploy's regression list for mmpretrain: each `model_configs` entry of
    # open-mmlab/mmdeploy tests/regression/mmpretrain.yml (commit 03c86d8), as the id of
    # mmpretrain's metafile model built from that config.
    "mmdeploy": PeerList("mmpretrain",
                         "open-mmlab/mmdeploy@03c86d8 tests/regression/mmpretrain.yml", (
        "resnet18_8xb32_in1k",
        "resnext50-32x4d_8xb32_in1k",
        "densenet121_3rdparty_in1k",
        "seresnet50_8xb32_in1k",
        "mobilenet-v2_8xb32_in1k",
        "mobilenet-v3-small_8xb128_in1k",
        "shufflenet-v1-1x_16xb64_in1k",
        "shufflenet-v2-1x_16xb64_in1k",
        "vit-base-p16_in21k-pre_3rdparty_in1k-384px",   # config vit-base-p16_64xb64_in1k-384px
        "swin-tiny_16xb64_in1k",
        "mobileone-s0_8xb32_in1k",
        "efficientnet-b0_3rdparty_8xb32_in1k",
        "conformer-tiny-p16_3rdparty_in1k",
        "efficientformer-l1_3rdparty_8xb128_in1k",
    )),
    # PaddleClas's own paddle2onnx test list: the models with a
    # test_tipc/config/<Arch>/<Model>_linux_gpu_normal_normal_paddle2onnx_python_linux_cpu.txt
    # in PaddlePaddle/PaddleClas (release 2.6).
    "paddle2onnx": PeerList("paddleclas", "PaddlePaddle/PaddleClas 2.6 test_tipc/config/*/"
                            "*_paddle2onnx_python_linux_cpu.txt", (
        "ResNet50",
        "ResNet50_vd",
        "MobileNetV3_large_x1_0",
        "PPHGNet_tiny",
        "PPHGNet_small",
        "PPLCNet_x0_25",
        "PPLCNet_x0_35",
        "PPLCNet_x0_5",
        "PPLCNet_x0_75",
        "PPLCNet_x1_0",
        "PPLCNet_x1_5",
        "PPLCNet_x2_0",
        "PPLCNet_x2_5",
        "PPLCNetV2_base",
        "SwinTransformer_tiny_patch4_window7_224",
    )),
    # The ten MindCV families people use most (issue 30's list), one model each.
    "mindcv-popular": PeerList("mindcv", "issue 30: the 10 MindCV families used most", (
        "mobilenet_v3_large_100",
        "vit_b_32_224",
        "convnext_tiny",
        "efficientnet_b0",
        "swin_tiny",
        "resnet18",
        "mobilevit_xx_small",
        "repvgg_a0",
        "shufflenet_v2_x0_5",
        "inception_v3",
    )),
}
