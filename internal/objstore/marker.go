package objstore

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
)

// usedSuffix makes the key of an image's used marker from its key.
const usedSuffix = ".used"

// maxMarker bounds what UsedMarker reads.
const maxMarker = 4096

// MarkUsed records that the image with this UUID at loc was resumed, so
// that it is never resumed again: it writes the small object KEY.used
// holding the UUID and the time. An object cannot be rewritten in place,
// which is why the mark is a sibling rather than a change of the image's
// superblock. A caller that cannot mark an image used should Delete it.
func MarkUsed(ctx context.Context, loc *Location, creds *Credentials, uuid string) error {
	if err := checkUUID(uuid); err != nil {
		return err
	}
	core, err := newCore(loc, creds, 0)
	if err != nil {
		return err
	}
	body := fmt.Appendf(nil, "uuid %s\nused %s\n", uuid, time.Now().UTC().Format(time.RFC3339))
	sum := sha256.Sum256(body)
	err = withRetry(ctx, 0, func() error {
		r := newBodyReader(body)
		defer r.Close()
		_, err := core.PutObject(ctx, loc.Bucket, loc.UsedKey(), r, int64(len(body)), "",
			hex.EncodeToString(sum[:]), minio.PutObjectOptions{ContentType: "text/plain", DisableContentSha256: true})
		return err
	})
	if err != nil {
		return fmt.Errorf("%s: marking the image used: %w", loc.Object(), wrapStore(err))
	}
	return nil
}

// checkUUID accepts what an image's UUID prints as, and other short
// printable names.
func checkUUID(uuid string) error {
	if uuid == "" || len(uuid) > 64 {
		return fmt.Errorf("objstore: an image UUID of %d bytes; want 1 to 64", len(uuid))
	}
	for i := 0; i < len(uuid); i++ {
		if c := uuid[i]; c <= ' ' || c >= 0x7f {
			return errors.New("objstore: an image UUID with a space or a non-printable byte")
		}
	}
	return nil
}

// UsedMarker reads loc's used marker: the UUID of the image that was
// resumed from loc, and whether there is a marker at all. The caller
// refuses an image whose UUID is marked used.
func UsedMarker(ctx context.Context, loc *Location, creds *Credentials) (uuid string, found bool, err error) {
	core, err := newCore(loc, creds, 0)
	if err != nil {
		return "", false, err
	}
	name := "s3://" + loc.Bucket + "/" + escape(loc.UsedKey(), keepInKey)
	body, _, _, err := core.GetObject(ctx, loc.Bucket, loc.UsedKey(), minio.GetObjectOptions{})
	if err != nil {
		if errCode(err) == "NoSuchKey" {
			return "", false, nil
		}
		return "", false, fmt.Errorf("%s: reading the used marker: %w", name, wrapStore(err))
	}
	defer body.Close()
	data, err := io.ReadAll(io.LimitReader(body, maxMarker+1))
	if err != nil {
		return "", false, fmt.Errorf("%s: reading the used marker: %w", name, wrapStore(err))
	}
	uuid, err = parseMarker(data)
	if err != nil {
		return "", false, fmt.Errorf("%s: %w; delete it if no image was resumed from %s", name, err, loc.Object())
	}
	return uuid, true, nil
}

// parseMarker finds the UUID in a marker.
func parseMarker(data []byte) (string, error) {
	if len(data) > maxMarker {
		return "", fmt.Errorf("a used marker of over %d bytes", maxMarker)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "uuid "); ok {
			if err := checkUUID(v); err != nil {
				return "", errors.New("a malformed used marker")
			}
			return v, nil
		}
	}
	return "", errors.New("a used marker without a uuid line")
}

// Delete removes loc's image, its used marker and any upload of it left
// unfinished. The image goes first: were the marker removed and the image
// not, a resumed image would lose its mark. Objects that are not there
// are no error.
func Delete(ctx context.Context, loc *Location, creds *Credentials) error {
	core, err := newCore(loc, creds, 0)
	if err != nil {
		return err
	}
	for _, key := range []string{loc.Key, loc.UsedKey()} {
		err := core.RemoveObject(ctx, loc.Bucket, key, minio.RemoveObjectOptions{})
		if err != nil && errCode(err) != "NoSuchKey" {
			return fmt.Errorf("s3://%s/%s: deleting: %w", loc.Bucket, escape(key, keepInKey), wrapStore(err))
		}
	}
	// Read the listing to its end, so that its goroutine ends too.
	var ids []string
	var listErr error
	for up := range core.ListIncompleteUploads(ctx, loc.Bucket, loc.Key, false) {
		switch {
		case up.Err != nil:
			listErr = cmp.Or(listErr, up.Err)
		case up.Key == loc.Key:
			ids = append(ids, up.UploadID)
		}
	}
	if listErr != nil {
		if c := errCode(listErr); c == "NotImplemented" || c == "AccessDenied" {
			return nil // the store does not tell; its lifecycle rules will do
		}
		return fmt.Errorf("%s: listing unfinished uploads: %w", loc.Object(), wrapStore(listErr))
	}
	for _, id := range ids {
		if err := core.AbortMultipartUpload(ctx, loc.Bucket, loc.Key, id); err != nil && errCode(err) != "NoSuchUpload" {
			return fmt.Errorf("%s: aborting an unfinished upload: %w", loc.Object(), wrapStore(err))
		}
	}
	return nil
}
