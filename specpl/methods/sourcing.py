"""Where the values of the `paper` preset come from (`Component.sources`): the phrasings the hosts
share, so each host names only its own released files and a published value is written once (the
schedule's sources are derived from `Host.training_defaults`, never typed again)."""

from __future__ import annotations

from typing import Any

DASSL_CROP = "KaiyangZhou/Dassl.pytorch dassl/config/defaults.py (INPUT.RRCROP_SCALE (0.08, 1.0))"
# a host's published schedule (`Host.training_defaults`) by the key its released yaml gives it
SCHEDULE_KEYS = {"epochs": "MAX_EPOCH", "batch_size": "BATCH_SIZE", "lr": "LR", "optimizer": "NAME"}


def context_sources(code: str) -> dict[str, str]:
    """Sources of the context options every `ContextHost` shares; `code` is the released file
    that builds the prompt (its ``N_CTX``/``CTX_INIT`` handling and the ``"." `` after the class)."""
    return {
        "n_ctx": f"{code} (N_CTX; set by the init phrase's token count when CTX_INIT is given)",
        "ctx_init": f"{code} (CTX_INIT)",
        "init_std": f"{code} (nn.init.normal_(ctx_vectors, std=0.02))",
        "ctx_from_template": "ours: off in paper, where the context comes from ctx_init as in the released code",
        "tail": f"{code} (prompts are prefix + ' ' + name + '.')",
    }


def schedule_sources(config: str, training: dict[str, Any], crop: str = DASSL_CROP) -> dict[str, str]:
    """Sources of a host's published schedule (`training`, its `training_defaults`), all set by its
    released `config`, each as that file spells it; `crop` is where its crop scale comes from."""
    sources = {f"train.{key}": f"{config} ({name} {training[key]})" for key, name in SCHEDULE_KEYS.items()}
    return {**sources, "train.crop_scale": crop}
