# The README's two commands: `make up` and `make test`.
.PHONY: up test install

install:
	scripts/install.sh

up: install
	.venv/bin/mlp up

test:
	scripts/test.sh
