# calico-lite: `make demo` brings up the lab, `make test` runs the suite. Both install what
# they need on a fresh Debian bookworm machine (as root) and are safe to run twice.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := etcd-server etcd-client frr gobgpd nftables iproute2 iputils-ping iperf3 procps psmisc gcc libc6-dev make \
  containerd runc containernetworking-plugins podman busybox-static qemu-system-x86 curl
STAMP_APT := $(VENV)/.apt-done
STAMP_PIP := $(VENV)/.pip-done
SHIM := build/calico-lite
# The Kubernetes control plane, built from the k8s.io/kubernetes Go module pinned in
# deploy/kube/go.mod (Go's own build cache makes a rebuild take seconds)
GO ?= $(shell command -v go || echo /usr/local/go/bin/go)
KUBE := build/kube/kube-apiserver
LAB ?= lab

.PHONY: all deps build demo test unit soak bench lab-down clean

all: build

$(STAMP_APT):
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get -o DPkg::Lock::Timeout=300 update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

$(STAMP_PIP): pyproject.toml $(STAMP_APT)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

deps: $(STAMP_APT) $(STAMP_PIP)

$(SHIM): plugin/shim/calico-lite-shim.c $(STAMP_APT)
	@mkdir -p build
	gcc -static -O2 -Wall -Wextra -o $(SHIM) plugin/shim/calico-lite-shim.c

$(KUBE): deploy/kube/go.mod deploy/kube/go.sum deploy/kube/build.sh
	PATH="$$(dirname $(GO)):$$PATH" bash deploy/kube/build.sh build/kube

build: deps $(SHIM) $(KUBE)

demo: build
	$(VENV)/bin/calico-lite lab down --name $(LAB) >/dev/null
	$(PY) -m calico_lite.demo --name $(LAB)

test: build
	$(VENV)/bin/pytest -q -p no:cacheprovider tests

unit: build
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/unit

# The faults campaign's long form (tests/faults/, README "Reliability"): longer etcd outages,
# more agent kills and restarts, more load waves, more fuzz examples; figures printed with -s
soak: build
	CALICO_LITE_SOAK=1 $(VENV)/bin/pytest -q -p no:cacheprovider -s tests/faults

bench: build
	$(PY) bench/cni.py

# The container image deploy/calico-lite.yaml runs (calico-lite:<version>), built offline by
# deploy/build-image.sh from a debootstrap'd bookworm base; base and image are cached in build/image
.PHONY: image
image: $(SHIM)
	bash deploy/build-image.sh

lab-down:
	$(VENV)/bin/calico-lite lab down --name $(LAB)

clean:
	rm -rf build $(VENV) *.egg-info
