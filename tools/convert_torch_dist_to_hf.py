"""slime-compatible name for ``python -m slime_entropy.megatron.convert torch-dist-to-hf``.

    python tools/convert_torch_dist_to_hf.py --input-dir /ckpt/run/iter_0000099 \
        --output-dir /models/Qwen3-4B-step99 --origin-hf-dir /models/Qwen3-4B
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slime_entropy.megatron.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["torch-dist-to-hf", *sys.argv[1:]]))
