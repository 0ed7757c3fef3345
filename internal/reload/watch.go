package reload

import (
	"context"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DefaultDebounce is how long a burst of file events must settle before one
// reload runs.
const DefaultDebounce = 200 * time.Millisecond

// Watch calls fn once after each burst of changes to the file at path, until
// ctx ends. It watches the file's directory, not the file: editors that write
// a temporary file and rename it over the original, and Kubernetes ConfigMap
// updates (a ..data symlink swapped in the same directory), replace the
// inode, which a watch on the file itself would lose. Any event in the
// directory schedules fn; fn is expected to skip a reload when the content is
// unchanged (Reloader.Reload with onlyIfChanged).
func Watch(ctx context.Context, path string, debounce time.Duration, fn func()) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := w.Add(dir); err != nil {
		w.Close()
		return err
	}
	go func() {
		defer w.Close()
		timer := time.NewTimer(time.Hour)
		timer.Stop()
		for {
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case _, ok := <-w.Events:
				if !ok {
					return
				}
				timer.Reset(debounce)
			case _, ok := <-w.Errors:
				if !ok {
					return
				}
				timer.Reset(debounce) // events may have been lost: check anyway
			case <-timer.C:
				fn()
			}
		}
	}()
	return nil
}
