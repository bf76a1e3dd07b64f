module github.com/khib/khib

go 1.26.8

require golang.org/x/sys v0.50.0

require (
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/klauspost/compress v1.20.4 // indirect
)
