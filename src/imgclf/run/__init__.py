"""The run folder: its files and readers (`folder`), and atomic writes (`atomic`)."""
