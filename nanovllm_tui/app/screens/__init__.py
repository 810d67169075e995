"""Screens of the app: settings modal, help, benchmark, full-screen dashboard."""
