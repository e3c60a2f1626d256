"""Build the shipped CLIP tokenizer files (vocab.json, merges.txt, LICENSE) from OpenAI's BPE vocabulary.

    python tools/build_tokenizer.py [--wheel PATH] [--out DIR]

Developer-time only: rgd never runs this, it reads the files this script wrote into
rgd_core/checkpoints/configs/clip_tokenizer/. Stable Diffusion 1.x, 2.x and both SDXL tokenizers all use the same
CLIP byte-level BPE (49,408 ids); only the pad token differs, and that lives in the per-family configs.

Where the vocabulary comes from: ``bpe_simple_vocab_16e6.txt.gz`` (OpenAI CLIP, MIT) ships byte-identical inside
the ``open_clip_torch`` wheel on PyPI. The script downloads that wheel with pip (``--no-deps``: it is never
installed, because it needs torchvision), reads the one file out of the zip and checks its sha256 before use.
No model hub is involved. Pass ``--wheel`` to use a wheel you already have.

The conversion follows the way CLIP's own tokenizer numbers its tokens (docs/offline.md section 2): 256 byte
characters, the same 256 with ``</w>``, one token per merge, then the two special tokens.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_REQUIREMENT = "open_clip_torch==3.3.0"
MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
# CLIP's vocabulary size is 49,408 = 256 bytes + 256 end-of-word bytes + merges + 2 specials.
MERGE_COUNT = 49152 - 256 - 2
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "rgd_core" / "checkpoints" / "configs" / "clip_tokenizer"

OPENAI_MIT_NOTICE = """\
MIT License

Copyright (c) 2021 OpenAI

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def download_wheel(directory: Path) -> Path:
    """Fetch the open_clip_torch wheel (not its dependencies) from the package index into ``directory``."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL_REQUIREMENT, "-d", str(directory)],
        check=True,
    )
    wheels = sorted(directory.glob("open_clip_torch-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download did not leave an open_clip_torch wheel in {directory}")
    return wheels[0]


def read_vocabulary(wheel: Path) -> bytes:
    """The gzip file from the wheel, checked against the known sha256 so a changed upstream file cannot slip in."""
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{MEMBER} in {wheel.name} has sha256 {digest}, expected {SHA256}")
    return data


def byte_characters() -> list[str]:
    """The GPT-2/CLIP byte-to-unicode table, as a list in table order (entry i is the character of token id i).

    The 188 printable bytes (33-126, 161-172, 174-255) stand for themselves; the other 68 bytes, in increasing
    order, are moved to chr(256), chr(257), ... so that every byte has a visible, non-space character.
    """
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def parse_merges(gz_data: bytes) -> list[tuple[str, str]]:
    """The merge rules: line 0 is a header, the next MERGE_COUNT lines are "left right" pairs."""
    lines = gzip.decompress(gz_data).decode("utf-8").split("\n")[1 : 1 + MERGE_COUNT]
    merges = [tuple(line.split(" ")) for line in lines]
    if len(merges) != MERGE_COUNT or any(len(pair) != 2 for pair in merges):
        raise SystemExit("the vocabulary file does not have the expected merge lines")
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token -> id, numbered in CLIP's order: bytes, bytes + "</w>", merged pairs, special tokens."""
    characters = byte_characters()
    tokens = characters + [c + "</w>" for c in characters] + [left + right for left, right in merges]
    tokens += list(SPECIAL_TOKENS)
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise SystemExit("duplicate tokens in the vocabulary")
    return vocab


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 with "\\n" line ends via a temporary file, so a failed run leaves the old file intact."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    os.replace(tmp, path)


def notice(wheel_name: str) -> str:
    """Where the files came from and the MIT notice that has to travel with them."""
    return (
        "vocab.json and merges.txt in this folder are generated by tools/build_tokenizer.py from\n"
        "bpe_simple_vocab_16e6.txt.gz, the byte-pair-encoding vocabulary of OpenAI's CLIP\n"
        "(https://github.com/openai/CLIP). The file was read out of the PyPI wheel\n"
        f"{wheel_name} (member {MEMBER}, sha256 {SHA256}),\n"
        "which redistributes it unchanged under the MIT license. Only the file format changed: the same\n"
        "merges, numbered the way CLIP numbers its tokens. The vocabulary is OpenAI's work, licensed as follows.\n"
        "\n" + OPENAI_MIT_NOTICE
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="an open_clip_torch wheel already on disk (default: pip download)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(Path(tmp))
        merges = parse_merges(read_vocabulary(wheel))
    vocab = build_vocab(merges)

    args.out.mkdir(parents=True, exist_ok=True)
    # Compact JSON keeps the shipped file small; ensure_ascii=False keeps the byte characters readable.
    write_text(args.out / "vocab.json", json.dumps(vocab, ensure_ascii=False, separators=(",", ":")) + "\n")
    write_text(args.out / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    write_text(args.out / "LICENSE", notice(wheel.name))
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {args.out}")


if __name__ == "__main__":
    main()
