//go:build tools

// Package tools keeps the S3 server scripts/build-s3.sh builds (SeaweedFS's `weed`) in go.mod
// and go.sum.
package tools

import (
	_ "github.com/seaweedfs/seaweedfs/weed"
)
