module github.com/dynamic-proxy/dynamic-proxy

go 1.26.8

require (
	github.com/fsnotify/fsnotify v1.10.1
	github.com/pelletier/go-toml/v2 v2.4.3
	golang.org/x/sys v0.50.0
)
