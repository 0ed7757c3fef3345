// Package version reports what binary this is. Version, Commit and Date are
// set at build time with -ldflags "-X ...version.Version=v1.2.3"; when they
// are not, the module and VCS data Go embeds in every build fill them in.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set with -ldflags -X.
var (
	Version = ""
	Commit  = ""
	Date    = ""
)

// Info is the build's identity.
type Info struct {
	Version, Commit, Date, GoVersion, Platform string
}

// Get returns the build info, falling back to runtime/debug.ReadBuildInfo.
func Get() Info {
	i := Info{Version: Version, Commit: Commit, Date: Date, GoVersion: runtime.Version(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if i.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			i.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if i.Commit == "" {
					i.Commit = s.Value
				}
			case "vcs.time":
				if i.Date == "" {
					i.Date = s.Value
				}
			case "vcs.modified":
				if s.Value == "true" && i.Commit != "" && Commit == "" {
					i.Commit += "-dirty"
				}
			}
		}
	}
	for _, p := range []*string{&i.Version, &i.Commit, &i.Date} {
		if *p == "" {
			*p = "unknown"
		}
	}
	if i.Version == "unknown" {
		i.Version = "dev"
	}
	return i
}

func (i Info) String() string {
	return fmt.Sprintf("dynamic-proxy %s\ncommit:     %s\nbuilt:      %s\ngo version: %s\nplatform:   %s\n",
		i.Version, i.Commit, i.Date, i.GoVersion, i.Platform)
}
