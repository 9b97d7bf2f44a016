"""Linear probe on frozen EfficientNet-Lite0 pooled features (Fashion-MNIST).

    python benchmarks/linear_probe.py [--size 64] [--train 2000] [--test 1000]

Features of the first N training images (stratified subsample, seed 0) and of a
stratified test subsample are computed once under inference mode; a multinomial
logistic regression (scikit-learn, L2, C chosen on a validation split carved from the
training images) is fit on them and scored on test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import write_results  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from vimw.backbones import create_backbone  # noqa: E402
from vimw.data import load_task  # noqa: E402

C_GRID = (0.01, 0.1, 1.0)


@torch.inference_mode()
def features(backbone, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    return torch.cat([backbone(backbone.preprocess(images[i : i + batch_size]))
                      for i in range(0, len(images), batch_size)]).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    args = parser.parse_args()

    started = time.perf_counter()
    data = load_task("fmnist", seed=0, max_train=args.train, max_test=args.test, val_fraction=0.2)
    backbone = create_backbone(args.backbone, image_size=args.size)
    train_x, val_x, test_x = (features(backbone, s.images) for s in (data.train, data.val, data.test))
    feature_seconds = time.perf_counter() - started
    scores = {}
    for c in C_GRID:
        probe = LogisticRegression(C=c, max_iter=2000).fit(train_x, data.train.targets.numpy())
        scores[c] = probe.score(val_x, data.val.targets.numpy())
    best_c = max(scores, key=scores.get)
    probe = LogisticRegression(C=best_c, max_iter=2000).fit(
        np.concatenate([train_x, val_x]), np.concatenate([data.train.targets.numpy(), data.val.targets.numpy()]))
    test_accuracy = probe.score(test_x, data.test.targets.numpy())
    seconds = time.perf_counter() - started
    markdown = (
        f"Linear probe, {args.backbone} at {args.size} px, Fashion-MNIST: {len(data.train) + len(data.val)} training "
        f"images ({len(data.val)} of them used first to choose C = {best_c} from {C_GRID}: val {scores}), "
        f"{len(data.test)} test images.\n\n"
        f"**Test accuracy {test_accuracy:.4f}**; {seconds:.1f} s in all ({feature_seconds:.1f} s for the features)."
    )
    print(markdown)
    write_results("linear_probe", {
        "settings": vars(args), "val_scores": {str(k): v for k, v in scores.items()}, "chosen_C": best_c,
        "test_accuracy": test_accuracy, "seconds": seconds, "feature_seconds": feature_seconds,
        "train_images": len(data.train) + len(data.val), "test_images": len(data.test),
    }, markdown)


if __name__ == "__main__":
    main()
