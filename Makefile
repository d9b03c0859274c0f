# The README's two commands: `make up` and `make test`.
.PHONY: up test install peers

install:
	scripts/install.sh

up: install
	.venv/bin/mlp up

test:
	scripts/test.sh

# Benchmark peers (bench/peers/): each in its own venv inside the repo, git-ignored.
peers:
	bench/peers/build.sh
