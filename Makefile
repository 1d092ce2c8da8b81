PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test test-all demo bench data table1 table1-cpu report gpu-prep gpu-check gpu gpu-render clean

install: ## create .venv and install pqattack (editable) with its test extras
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 || $(BIN)/pip install -q torch torchvision
	$(BIN)/pip install -q -e '.[test]'

test: ## run the test suite, without the slow tests (pyproject.toml's markers)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: ## every test, the slow ones included (the gpu tests skip without CUDA)
	$(BIN)/python -m pytest -q

demo: ## the whole pipeline offline on the synthetic set, CPU: 20 s on the 2-core Xeon (bf16), 61 s on the 2-core AMD EPYC (fp32); make bench's demo figure
	$(BIN)/python -m pqattack experiment=demo

bench: ## CPU benchmark, fast path vs plain baseline per figure: ratios, peak memory -> outputs/bench/cpu.json (docs/benchmarks.md)
	$(BIN)/python -m pqattack.bench --device cpu --out outputs/bench/cpu.json

CIFAR_ARCHIVE ?= ../shared/data/cifar10-jpeg.tar.xz
data: ## unpack the CIFAR-10 JPEG copy ($(CIFAR_ARCHIVE); make data CIFAR_ARCHIVE=path/to/it) into data/
	@test -f "$(CIFAR_ARCHIVE)" || { echo "make data: $(CIFAR_ARCHIVE) is missing; give the archive's place: make data CIFAR_ARCHIVE=path/to/cifar10-jpeg.tar.xz (without data/, a CIFAR-10 job tries torchvision's download)" >&2; exit 2; }
	mkdir -p data && tar -C data -xJf "$(CIFAR_ARCHIVE)"

table1: ## the paper's Table 1 on CIFAR-10 (GPU)
	$(BIN)/python -m pqattack experiment=table1

table1-cpu: ## CPU-scale Table 1 on CIFAR-10 (74 min of job time on the 2-core Intel Xeon, results/table1_cpu.md)
	$(BIN)/python -m pqattack experiment=table1_cpu

REPORT_IN ?= results
REPORT_OUT ?= results/report
report: ## the reproduction report (index.md + figures) from the records in $(REPORT_IN), into $(REPORT_OUT)
	$(BIN)/python -m pqattack.report $(REPORT_IN) --out $(REPORT_OUT) --stand-in fastnet=vgg16

gpu-prep: ## fill .gpu/ (git-ignored) with the wheels and the CIFAR-10 archive the GPU machine lacks, and check them
	@test -x ../shared/tools/gpu-prep || { echo "make gpu-prep: ../shared/tools/gpu-prep is missing (it exists on this project's machines only). Put Python 3.12 x86-64 wheels of faiss-cpu, hydra-core, omegaconf, antlr4-python3-runtime 4.9.3, hydra-submitit-launcher, hydra-joblib-launcher, submitit, cloudpickle and joblib into .gpu/wheels/ and cifar10-jpeg.tar.xz into .gpu/, then run make gpu-check." >&2; exit 2; }
	@test -d .git || { echo "make gpu-prep: run it in a checkout whose .git is a folder (../shared/tools/gpu-prep writes .git/info/exclude)" >&2; exit 2; }
	../shared/tools/gpu-prep
	$(MAKE) gpu-check

gpu-check: ## check .gpu/: every wheel's requirements met on the GPU machine, the data archive there, the size that travels
	$(BIN)/python -m pqattack.gpu.prep .gpu

gpu: ## on the GPU machine: the staged run (tools/gpu-run: smoke, Tables 1-3, bench, Table 4, beyond, defense, bench_compile; records into $$OUT)
	tools/gpu-run

GPU_RECORDS ?= outputs/gpu-run/out
gpu-render: ## a GPU run's fetched records (GPU_RECORDS) into results/table1-4 and docs/benchmarks.md
	tools/gpu-render $(GPU_RECORDS)

clean:
	rm -rf outputs .pytest_cache
