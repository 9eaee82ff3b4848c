"""Uploads one file with the unmodified tuspy client, for outlast's e2e upload tests.

python3 tuspy_upload.py ENDPOINT FILE STORE CHUNK [STOP_AT]

With STOP_AT, uploading stops after the chunk that reaches STOP_AT bytes and the process
exits with code 3 ("STOPPED <url>"). Running it again with the same STORE resumes from the
stored URL. Every chunk carries Upload-Checksum (sha1). On success it prints "DONE <url>".
"""

import sys

from tusclient import client
from tusclient.storage import filestorage


def main() -> int:
    endpoint, path, store, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    stop_at = int(sys.argv[5]) if len(sys.argv) > 5 else None
    storage = filestorage.FileStorage(store)
    uploader = client.TusClient(endpoint).uploader(
        path,
        chunk_size=chunk,
        store_url=True,
        url_storage=storage,
        upload_checksum=True,
        metadata={"filename": "upload.bin"},
        retries=3,
        retry_delay=0,
    )
    uploader.upload(stop_at=stop_at)
    done = uploader.offset >= uploader.get_file_size()
    print(("DONE " if done else "STOPPED ") + str(uploader.url), flush=True)
    return 0 if done else 3


if __name__ == "__main__":
    sys.exit(main())
