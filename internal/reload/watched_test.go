package reload

import (
	"os"
	"path/filepath"
	"testing"
)

// TestWatchedFollowsCertbotLinks: certbot's live/NAME/fullchain.pem ->
// ../../archive/NAME/fullchain1.pem: the link, the archive file and both
// directories are listed; after certbot points the link at fullchain2.pem,
// the new file is.
func TestWatchedFollowsCertbotLinks(t *testing.T) {
	root := t.TempDir()
	live, archive := filepath.Join(root, "live", "site"), filepath.Join(root, "archive", "site")
	for _, d := range []string{live, archive} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"fullchain1.pem", "fullchain2.pem"} {
		if err := os.WriteFile(filepath.Join(archive, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	link := filepath.Join(live, "fullchain.pem")
	if err := os.Symlink("../../archive/site/fullchain1.pem", link); err != nil {
		t.Fatal(err)
	}
	names, dirs := watchedNames(link)
	for _, want := range []string{link, filepath.Join(archive, "fullchain1.pem")} {
		if !names[want] {
			t.Errorf("names %v lack %s", names, want)
		}
	}
	for _, want := range []string{live, archive} {
		if !dirs[want] {
			t.Errorf("dirs %v lack %s", dirs, want)
		}
	}
	tmp := link + ".new"
	if err := os.Symlink("../../archive/site/fullchain2.pem", tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
	names, _ = watchedNames(link)
	if !names[filepath.Join(archive, "fullchain2.pem")] || names[filepath.Join(archive, "fullchain1.pem")] {
		t.Errorf("after the swap names = %v, want fullchain2.pem and not fullchain1.pem", names)
	}
}

// TestWatchedFollowsADirectoryLink: a file under a directory symlink
// (live -> v1, swapped to v2 by a rename) has the link watched in its
// parent.
func TestWatchedFollowsADirectoryLink(t *testing.T) {
	root := t.TempDir()
	os.Mkdir(filepath.Join(root, "v1"), 0o700)
	os.WriteFile(filepath.Join(root, "v1", "site.pem"), []byte("x"), 0o600)
	live := filepath.Join(root, "live")
	if err := os.Symlink("v1", live); err != nil {
		t.Fatal(err)
	}
	names, dirs := watchedNames(filepath.Join(live, "site.pem"))
	if !names[live] || !dirs[root] || !names[filepath.Join(root, "v1", "site.pem")] {
		t.Errorf("names %v dirs %v: want the link %s watched in %s, and the real file", names, dirs, live, root)
	}
}
