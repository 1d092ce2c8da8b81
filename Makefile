PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test demo bench data table1 table1-cpu report clean

install: ## create .venv and install pqattack (editable) with its test extras
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 || $(BIN)/pip install -q torch torchvision
	$(BIN)/pip install -q -e '.[test]'

test: ## run the test suite
	$(BIN)/python -m pytest -q

demo: ## the whole pipeline offline on the synthetic set, CPU, < 60 s
	$(BIN)/python -m pqattack experiment=demo

bench: ## CPU benchmark, fast path vs plain baseline per figure: ratios, peak memory -> outputs/bench/cpu.json (docs/benchmarks.md)
	$(BIN)/python -m pqattack.bench --device cpu --out outputs/bench/cpu.json

data: ## unpack the CIFAR-10 JPEG copy into data/
	mkdir -p data && tar -C data -xJf ../shared/data/cifar10-jpeg.tar.xz

table1: ## the paper's Table 1 on CIFAR-10 (GPU)
	$(BIN)/python -m pqattack experiment=table1

table1-cpu: ## CPU-scale Table 1 on CIFAR-10 (55 min measured on 2 shared cores)
	$(BIN)/python -m pqattack experiment=table1_cpu

REPORT_IN ?= results
REPORT_OUT ?= results/report
report: ## the reproduction report (index.md + figures) from the records in $(REPORT_IN), into $(REPORT_OUT)
	$(BIN)/python -m pqattack.report $(REPORT_IN) --out $(REPORT_OUT)

clean:
	rm -rf outputs .pytest_cache
