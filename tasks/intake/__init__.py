"""What to segment: images under a prefix or in a manifest, and S3 notifications on SQS."""
