package reload

import (
	"context"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// WatchFiles calls fn once the files that files() returns (the TLS
// certificates, keys and CAs of the running config: config.TLSFiles) have
// changed and no event has come for debounce, until ctx ends. As Watch
// does for the config file, it watches their directories, every symlink
// on the way to each real file and the real files (watchedNames), so a
// Kubernetes secret's ..data swap and certbot's live/ links are followed;
// after each call it asks files() again, since a reload may name other
// files and a swapped link leads elsewhere.
//
// Unlike Watch it does not wait for the content to settle: a certificate
// and its key are two files, and a reload that reads a half-written pair
// fails, keeps the old certificates and is retried by the event that
// completes the write.
func WatchFiles(ctx context.Context, files func() []string, debounce time.Duration, fn func()) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	set := newWatchSet(w)
	follow := func() {
		var abs []string
		for _, f := range files() {
			if a, err := filepath.Abs(f); err == nil {
				abs = append(abs, a)
			}
		}
		_ = set.follow(abs) // a directory that cannot be watched is not followed
	}
	follow()
	go func() {
		defer w.Close()
		timer := time.NewTimer(time.Hour)
		timer.Stop()
		for {
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if set.relevant(ev) {
					timer.Reset(debounce)
				}
			case _, ok := <-w.Errors:
				if !ok {
					return
				}
				timer.Reset(debounce) // events may have been lost: reload anyway
			case <-timer.C:
				// Follow the links as they lead now before fn runs, so a
				// change right after it is seen; and again after, since fn
				// (a reload) may name other files.
				follow()
				fn()
				follow()
			}
		}
	}()
	return nil
}
