package output

import (
	"io"
	"os"
)

func isStdStream(c io.Closer) bool {
	f, ok := c.(*os.File)
	return ok && (f == os.Stdout || f == os.Stderr)
}
