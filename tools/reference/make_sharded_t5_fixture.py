#!/usr/bin/env python3
"""The tiny FLUX.1-schnell T5 encoder saved as transformers shards it (`model-0000N-of-0000M
.safetensors` + `model.safetensors.index.json`, as FLUX.1's and SD3's `text_encoder_2/3` ship):
tests/fixtures/sharded/tiny-flux-schnell-text_encoder_2/. Run by hand after make_flux_fixtures.py.
"""

import shutil
import sys
from pathlib import Path

from transformers import T5EncoderModel

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import FIX  # noqa: E402


def main():
    out = FIX / "sharded" / "tiny-flux-schnell-text_encoder_2"
    if out.exists():
        shutil.rmtree(out)
    t5 = T5EncoderModel.from_pretrained(FIX / "tiny-flux-schnell" / "text_encoder_2")
    t5.save_pretrained(out, max_shard_size="10KB", safe_serialization=True)
    print(sorted(p.name for p in out.iterdir()))


if __name__ == "__main__":
    main()
