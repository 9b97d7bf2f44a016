"""Child processes of the reliability suite (run as scripts, so each is a real, separate process).

``add ZOO PREFIX COUNT GO_FILE``: wait for GO_FILE (so all writers start together), then
add COUNT tiny modules named PREFIX-0.. to ZOO.

``train WORKDIR NPZ KILL``: train a convpass module on the synthetic task with a
checkpoint per epoch; KILL is where to SIGKILL itself: ``epoch1`` (after the first
checkpoint is written), ``replace:K`` / ``fsync:K`` (before the K-th os.replace /
os.fsync of this run), or ``none``.
"""

from __future__ import annotations

import sys
import zlib
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.reliability import add_tiny, install_kill  # noqa: E402


def run_add(root: str, prefix: str, count: str, go_file: str) -> None:
    from vimw.zoo import Zoo

    deadline = time.monotonic() + 120
    while not Path(go_file).exists():
        if time.monotonic() > deadline:
            raise SystemExit("never told to go")
        time.sleep(0.01)
    zoo = Zoo(root)
    for i in range(int(count)):
        add_tiny(zoo, f"{prefix}-{i}", seed=zlib.crc32(f"{prefix}-{i}".encode()) % 10_000)


def train_setup(npz: str):
    import torch

    from vimw.backbones import create_backbone
    from vimw.data import load_task
    from vimw.modules import ConvpassConfig, ModuleSet
    from vimw.training import TaskModel, TrainConfig, head_config_for

    backbone = create_backbone("efficientnet_lite0", image_size=40)
    data = load_task(f"npz:{npz}", seed=0)
    torch.manual_seed(0)  # module initialisation draws from the global RNG
    module = ModuleSet.create(ConvpassConfig(hidden_dim=4), backbone.sites)
    model = TaskModel(backbone, head_config_for(backbone, data.kind, data.num_classes), plugin=module)
    config = TrainConfig(epochs=3, batch_size=8, lr=5e-3, seed=0)
    return model, data, config


def run_train(workdir: str, npz: str, kill: str) -> None:
    from vimw.training import fit

    model, data, config = train_setup(npz)
    report = Path(workdir).parent / "killed.txt"
    on_epoch_end = None
    if kill == "epoch1":
        def on_epoch_end(epoch, record):
            if epoch == 1:
                from helpers.reliability import _die

                _die(report, "fit", "after checkpoint of epoch", 1, ())
    elif kill != "none":
        function, k = kill.split(":")
        install_kill(function, "before", int(k), report)
    fit(model, data, config, checkpoint_dir=workdir, resume=True, progress=False, on_epoch_end=on_epoch_end)


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    {"add": run_add, "train": run_train}[command](*arguments)
