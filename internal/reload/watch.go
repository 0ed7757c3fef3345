package reload

import (
	"bytes"
	"cmp"
	"context"
	"maps"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DefaultDebounce is the quiet period of the file watch: how long a burst
// of events on the config file must settle before its content is read, and
// how long that content must then stay the same before it is reloaded.
const DefaultDebounce = 200 * time.Millisecond

// eventSeen, when set (by tests, before Watch), is told of every event the
// watch receives and whether it concerns the config file.
var eventSeen func(name string, relevant bool)

// settleRead, when set (by tests, before Watch), is told of every read the
// watch makes to see whether the file has settled.
var settleRead func(data []byte)

// maxLinkHops bounds how many symlinks Watch follows from the config path.
const maxLinkHops = 8

// Watch calls fn when the config file at path has changed and settled,
// until ctx ends.
//
// It watches the file's directory, not the file: editors that write a
// temporary file and rename it over the original, and Kubernetes ConfigMap
// updates (a ..data symlink swapped in the same directory), replace the
// inode, which a watch on the file itself would lose. Only events on the
// config file itself, on the symlinks that lead from it to the real file,
// and on that file count: writes to its neighbours (a log file beside it,
// for instance) are ignored.
//
// A change is taken once it has settled: after an event, the file is read
// once no event has come for debounce, and read again after a further
// quiet debounce; fn runs only when both reads agree, so a file that is
// still being written is never reloaded half-way.
func Watch(ctx context.Context, path string, debounce time.Duration, fn func()) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	set := newWatchSet(w)
	reread := settleRead
	if err := set.follow([]string{abs}); err != nil {
		w.Close()
		return err
	}
	go func() {
		defer w.Close()
		timer := time.NewTimer(time.Hour)
		timer.Stop()
		var last []byte // the content read when the timer last fired
		read := false   // last holds a read since the latest event
		pending := false
		for {
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if !set.relevant(ev) {
					continue // a neighbour of the config file
				}
				pending, read = true, false
				timer.Reset(debounce)
			case _, ok := <-w.Errors:
				if !ok {
					return
				}
				pending, read = true, false // events may have been lost: check anyway
				timer.Reset(debounce)
			case <-timer.C:
				if !pending {
					continue
				}
				data, err := os.ReadFile(abs)
				if err == nil && reread != nil {
					reread(data)
				}
				if err == nil && (!read || !bytes.Equal(data, last)) {
					last, read = data, true // read once more after a quiet period
					timer.Reset(debounce)
					continue
				}
				pending, read = false, false
				fn() // settled, or unreadable: the reloader reports it
				// A swapped symlink may now lead elsewhere (best effort: the
				// config's own directory is watched already).
				_ = set.follow([]string{abs})
			}
		}
	}()
	return nil
}

// watchSet is what a file watch follows: the names whose events concern
// its files and the directories watched for them (watchedNames of each).
type watchSet struct {
	w     *fsnotify.Watcher
	names map[string]bool
	dirs  map[string]bool
	seen  func(name string, relevant bool) // eventSeen when the watch started
}

func newWatchSet(w *fsnotify.Watcher) *watchSet {
	return &watchSet{w: w, dirs: map[string]bool{}, seen: eventSeen}
}

// follow makes the names those of paths (absolute) as their links lead
// now, and watches every directory they need that is not watched yet. It
// returns the first directory that could not be watched.
func (s *watchSet) follow(paths []string) error {
	names := map[string]bool{}
	var first error
	for _, p := range paths {
		ns, ds := watchedNames(p)
		maps.Copy(names, ns)
		for d := range ds {
			if s.dirs[d] {
				continue
			}
			if err := s.w.Add(d); err != nil {
				first = cmp.Or(first, err)
				continue
			}
			s.dirs[d] = true
		}
	}
	s.names = names
	return first
}

// relevant reports whether ev concerns a followed file.
func (s *watchSet) relevant(ev fsnotify.Event) bool {
	r := s.names[filepath.Clean(ev.Name)]
	if s.seen != nil {
		s.seen(ev.Name, r)
	}
	return r
}

// watchedNames returns the paths whose events concern the file at path
// (absolute: the config file, a certificate): the path itself, every
// symlink on the way to the real file — a directory of the path that is
// one, and the directories the links lead through (a ConfigMap's ..data) —
// and the real file; and the directories to watch for them.
func watchedNames(path string) (names, dirs map[string]bool) {
	names = map[string]bool{path: true}
	dirs = map[string]bool{filepath.Dir(path): true}
	// A directory on the way that is a symlink (certbot's live/, a
	// versioned directory swapped by a rename) is watched in its parent.
	for d := filepath.Dir(path); d != filepath.Dir(d); d = filepath.Dir(d) {
		if fi, err := os.Lstat(d); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			names[d], dirs[filepath.Dir(d)] = true, true
		}
	}
	p := path
	for range maxLinkHops {
		target, err := os.Readlink(p)
		if err != nil {
			break // not a symlink (or gone): p is the file
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(p), target)
		}
		target = filepath.Clean(target)
		// Each step of the target's path below the link's directory may be
		// swapped: ..data in a ConfigMap.
		for d := target; d != filepath.Dir(p) && d != filepath.Dir(d); d = filepath.Dir(d) {
			names[d] = true
		}
		dirs[filepath.Dir(target)] = true
		p = target
	}
	if real, err := filepath.EvalSymlinks(path); err == nil {
		names[real] = true
		dirs[filepath.Dir(real)] = true
	}
	return names, dirs
}
