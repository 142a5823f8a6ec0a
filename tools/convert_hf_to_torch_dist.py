"""slime-compatible name for ``python -m slime_entropy.megatron.convert hf-to-torch-dist``.

    python tools/convert_hf_to_torch_dist.py ${MODEL_ARGS[@]} --hf-checkpoint /models/Qwen3-4B \
        --save /ckpt/Qwen3-4B_torch_dist
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slime_entropy.megatron.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["hf-to-torch-dist", *sys.argv[1:]]))
