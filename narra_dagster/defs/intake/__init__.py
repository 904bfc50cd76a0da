"""Uploads in: the inbox sensor (``inbox_sensor.py``) and the S3 upload sensor
(``s3_sensor.py``, added only when an S3 inbox is configured)."""
