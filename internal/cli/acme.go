package cli

import (
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/caddyserver/certmagic"

	"github.com/dynamic-proxy/dynamic-proxy/internal/acme"
	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/fleet"
	"github.com/dynamic-proxy/dynamic-proxy/internal/store"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf"
)

// startACME makes the manager of the rules whose certificates come by
// ACME, when a rule uses it at start-up (nil otherwise): its storage is
// the fleet's Redis (with a local copy in [acme] storage) or, without
// [redis], that directory, created 0700.
func startACME(cfg *config.Config, fl *fleet.Follower, log *slog.Logger) (*acme.Manager, error) {
	if len(cfg.ACMENames()) == 0 {
		return nil, nil
	}
	a := cfg.ACMESettings()
	dir := cfg.ACMEStorageDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("acme.storage: %w", err)
	}
	if fi, err := os.Stat(dir); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("acme: the storage directory can be read by others; it holds private keys (chmod 700)", "dir", dir, "mode", fi.Mode().Perm().String())
	}
	var storage certmagic.Storage = &certmagic.FileStorage{Path: dir}
	where := "directory " + dir
	if st := fl.Store(); st != nil {
		key, err := cfg.ACMEEncryptionKey()
		if err != nil {
			return nil, fmt.Errorf("acme.encryption_key_file: %w", err)
		}
		rs, err := st.ACMEStorage(store.ACMEStorageOptions{Cache: dir, EncryptionKey: key, Log: log})
		if err != nil {
			return nil, err
		}
		storage = rs
		where = fmt.Sprintf("redis %s (local copy %s, private keys encrypted: %v)", st.Addr(), dir, key != nil)
	}
	var roots *x509.CertPool
	if a.CARoot != "" {
		var err error
		if roots, err = tlsconf.LoadCAPool(cfg.FilePath(a.CARoot)); err != nil {
			return nil, fmt.Errorf("acme.ca_root: %w", err)
		}
	}
	m, err := acme.NewManager(acme.Options{Email: a.Email, Directory: a.Directory, Roots: roots, Challenges: a.Challenges,
		HTTPListen: cfg.ACMEHTTPListen(), Storage: storage, RenewCheckInterval: a.RenewCheckInterval.D(), Log: log})
	if err != nil {
		return nil, err
	}
	log.Info("acme: certificates by ACME", "directory", a.Directory, "challenges", a.Challenges, "storage", where)
	return m, nil
}

// printACME is --validate's account of ACME: the directory used (and
// whether it is the default), the challenges, the storage and each rule's
// names.
func printACME(cfg *config.Config, stdout io.Writer) {
	names := cfg.ACMENames()
	if len(names) == 0 {
		return
	}
	a := cfg.ACMESettings()
	dir := a.Directory
	if dir == config.LetsEncryptDirectory {
		dir += " (Let's Encrypt production, the default)"
	}
	fmt.Fprintf(stdout, "acme: directory %s\n", dir)
	fmt.Fprintf(stdout, "  challenges: %v", a.Challenges)
	if l := cfg.ACMEHTTPListen(); l != "" {
		fmt.Fprintf(stdout, " (http-01 on %s)", l)
	}
	fmt.Fprintln(stdout)
	if cfg.Redis != nil {
		enc := "unencrypted (no encryption_key_file)"
		if a.EncryptionKeyFile != "" {
			enc = "encrypted"
		}
		fmt.Fprintf(stdout, "  storage: redis, local copy %s; private keys %s\n", cfg.ACMEStorageDir(), enc)
	} else {
		fmt.Fprintf(stdout, "  storage: directory %s\n", cfg.ACMEStorageDir())
	}
	for i := range cfg.Rules {
		r := &cfg.Rules[i]
		if n, ok := names[r.Name]; ok {
			fmt.Fprintf(stdout, "  %s: %v (tls-alpn-01 on %s)\n", r.Name, n, cfg.Listener(r))
		}
	}
}
