from mgaki.cli import main

if __name__ == "__main__":  # not when a spawned process imports it (service/ingest/runs.py)
    main()
