"""``vimw backbones``: the registered backbones, their sites and sizes."""

from __future__ import annotations

from vimw.backbones import create_backbone, list_backbones


def register(commands) -> None:
    parser = commands.add_parser("backbones", help="list backbones with their sites and parameter counts")
    parser.add_argument("--sites", action="store_true", help="also list every site of each backbone")
    parser.set_defaults(handler=run)


def run(args) -> int:
    for entry in list_backbones():
        backbone = create_backbone(entry.name)
        info = backbone.describe()
        print(
            f"{entry.name:22s} {info['num_parameters'] / 1e6:6.2f} M params  {info['num_sites']:3d} sites  "
            f"{entry.default_size} px  {entry.description}"
        )
        if args.sites:
            for site in backbone.sites:
                print(
                    f"    {site.name:14s} block {site.block:2d}  {site.layout:7s} {site.in_channels:5d} -> "
                    f"{site.out_channels:5d}  stride {site.stride}  inner {site.inner_channels}"
                )
    print("hf:<name or directory>  HF transformers vision transformers: CLIPVisionModel, ViTModel, Dinov2Model, "
          "SiglipVisionModel (extra 'clip'); 2 sites per block")
    return 0
