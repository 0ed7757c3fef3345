//go:build !linux

package fdlimit

import "errors"

// Limit returns 0 (unknown) where the limit is not read yet: nothing is
// capped and the data path keeps no budget.
func Limit() (int64, error) { return 0, nil }

// Open is not implemented here.
func Open() (int, error) {
	return 0, errors.New("counting open descriptors is implemented on Linux only")
}
