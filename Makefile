# dynamic-proxy — the two commands a fresh machine needs:
#   make run    build and run the proxy on ./config.toml
#   make test   run the whole test suite (installs what it needs)
GO      ?= go
BIN     := bin/dynamic-proxy
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
DATE    ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS := -s -w \
	-X github.com/dynamic-proxy/dynamic-proxy/internal/version.Version=$(VERSION) \
	-X github.com/dynamic-proxy/dynamic-proxy/internal/version.Commit=$(COMMIT) \
	-X github.com/dynamic-proxy/dynamic-proxy/internal/version.Date=$(DATE)

.PHONY: build run test echo bench clean
build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/dynamic-proxy

run: build
	./$(BIN) -c config.toml

# Two echo backends for the shipped config.toml (Ctrl-C or kill stops both:
# a background job of sh ignores SIGINT, so the trap stops web1).
echo:
	$(GO) build -o bin/echo ./tools/echo
	@./bin/echo -listen 127.0.0.1:9001 -name web1 & web1=$$!; \
	trap 'kill $$web1 2>/dev/null' EXIT; trap 'exit 130' INT TERM; \
	./bin/echo -listen 127.0.0.1:9002 -name web2

test:
	bash scripts/test.sh

# Side-by-side benchmark with HAProxy and nginx (installs them when missing);
# writes docs/BENCHMARKS.md. Takes about 15 minutes.
bench:
	$(GO) run ./bench -rounds 5

clean:
	rm -rf bin
