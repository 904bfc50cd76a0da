"""The application layer: what the command line (and the HTTP API) do, as plain functions.

Processing and batch runs, status, text and image queries, health. A surface parses its input,
calls these, and prints or serialises what they return; nothing here is a Dagster decorator.
"""
