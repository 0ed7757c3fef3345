package router_test

import (
	"fmt"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

// Using the first_available plugin of example_test.go as the engine and
// --validate do.
func Example_writingARouterPlugin() {
	backends := []*backend.Backend{
		backend.New("web", "primary", "127.0.0.1:9001", 1, nil),
		backend.New("web", "backup", "127.0.0.1:9002", 1, nil),
	}
	// [routers.failover] plugin = "first_available"
	r, err := router.New("first_available", map[string]any{}, backends)
	if err != nil {
		panic(err)
	}
	var req router.Request
	b, _ := r.Pick(&req)
	fmt.Println(b.ID)

	// config = { order = "reverse" }
	rev, _ := router.New("first_available", map[string]any{"order": "reverse"}, backends)
	b, _ = rev.Pick(&req)
	fmt.Println(b.ID)

	backends[0].Health().SetUp(false) // the health checker saw it fail
	b, _ = r.Pick(&req)
	fmt.Println(b.ID)

	// config = { order = "random" }
	fmt.Println(router.Validate("first_available", map[string]any{"order": "random"}))
	// Output:
	// primary
	// backup
	// backup
	// config.order: want one of ["config" "reverse"], got "random"
}
