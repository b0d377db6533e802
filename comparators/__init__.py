"""Semi-supervised segmentation methods that Table 1 compares with Hermes (#28), one plug-in module each:
abd (ABD, CVPR 2024), admt (AD-MT, ECCV 2024), ssnet (SS-Net, MICCAI 2022), dcnet (DCNet, MICCAI 2023).

Each module exposes SETTINGS, build_extra(model, cfg_dict),
step(model, extra, batch_l, batch_u, it, total, cfg)
and optionally after_step(model, extra, it, total, cfg); shared helpers live in comparators.common.
"""
