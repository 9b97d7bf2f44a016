"""Every file name and format version vimw writes, in one place.

Readers and writers import their names from here, so a directory written by one part
of vimw is read by another under the same names. A ``*_FORMAT`` is the version of a
file's layout: bump it when a change makes older vimw unable to read the file, and keep
a reader for the older version. Importing this file costs nothing (plain constants).
"""

from __future__ import annotations

# -- a zoo: ZOO/index.json, ZOO/.lock, ZOO/modules/<name>/{module,head}.safetensors ... -----
ZOO_INDEX_FILE = "index.json"
ZOO_INDEX_FORMAT = 1
ZOO_LOCK_FILE = ".lock"  # advisory lock of the zoo's writers (index, recipe.json)
ZOO_MODULES_DIR = "modules"
ZOO_STAGING_DIR = ".staging"
ZOO_TRASH_DIR = ".trash"
ZOO_WORK_DIR = ".work"  # checkpoints of modules being trained
MODULE_WEIGHTS_FILE = "module.safetensors"
MODULE_HEAD_FILE = "head.safetensors"
MODULE_CARD_FILE = "README.md"  # the module card, for people and model hubs
MODULE_FORMAT = 1

# -- shared by every directory that describes itself ----------------------------------------
MANIFEST_FILE = "manifest.json"
TRAINING_LOG_FILE = "log.jsonl"  # one JSON line per epoch (zoo modules, downstream runs)

# -- a downstream model (vimw aggregate) ------------------------------------------------------
MODEL_WEIGHTS_FILE = "model.safetensors"
MODEL_FORMAT = 1
MODEL_LOCK_FILE = ".lock"  # held while a run writes the model directory
GATES_PLOT_FILE = "gates.png"
FOLDED_EXPORT_FORMAT = 1  # the metadata of a folded (plain backbone) export
EXPORT_MANIFEST_SUFFIX = ".json"  # an export FILE's manifest for people: FILE.json

# -- recipes ----------------------------------------------------------------------------------
RECIPE_FILE = "recipe.json"  # the effective recipe, next to every result
RECIPE_FORMAT = 1

# -- training checkpoints ---------------------------------------------------------------------
CHECKPOINT_STATE_FILE = "state.json"
CHECKPOINT_FORMAT = 1
CHECKPOINT_TENSORS_FILE = "state-{epoch:05d}.safetensors"  # one per kept epoch; older ones are removed
CHECKPOINT_TENSORS_GLOB = "state-*.safetensors"

# -- TransMiter -------------------------------------------------------------------------------
ADAPTER_WEIGHTS_FILE = "adapter.safetensors"
ADAPTER_FORMAT = "vimw.transmiter-adapter"
ADAPTER_FORMAT_VERSION = 1
LOGIT_CACHE_FILE = "logits.safetensors"
LOGIT_CACHE_FORMAT = "vimw.logit-cache"
LOGIT_CACHE_FORMAT_VERSION = 1
FINETUNED_MANIFEST_FILE = "finetuned.json"  # a fine-tuned teacher plug-in
FINETUNED_WEIGHTS_FILE = "plugin.safetensors"
TEACHER_FORMAT = "vimw.transfer-teacher"
TEACHER_FORMAT_VERSION = 1
TEACHER_DIR = "teacher"  # where `vimw transfer extract` saves the teacher, inside its --out
TRANSFER_CACHE_DIR = "transfer-cache"  # the logit cache, under runs/ (CLI, benchmark) or the demo's workdir
TRANSFER_DEMO_RESULTS = "transfer_results"  # the demo's transfer step: .json and .md

# -- reports ----------------------------------------------------------------------------------
REPORT_PAGE_FILE = "index.html"
REPORT_IMAGES_DIR = "images"
# benchmark results a report reads from a --results folder (benchmarks/results/)
DOWNSTREAM_RESULTS_FILE = "downstream.json"
TRANSFER_RESULTS_FILE = "transfer.json"

# -- the demo's work directory (vimw demo) -------------------------------------------------------
DEMO_ZOO_DIR = "zoo"
DEMO_MODELS_DIR = "models"
DEMO_PHOTOS_DIR = "photos"
DEMO_VIM_RESULTS = "vim_results"  # .json (every row) and .md (the table)

# -- other projects' names (read and written for interoperability) ---------------------------
PEFT_ADAPTER_CONFIG_FILE = "adapter_config.json"
PEFT_ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
HF_PREPROCESSOR_FILE = "preprocessor_config.json"
