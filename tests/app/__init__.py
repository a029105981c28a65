"""Tests of the Streamlit app: headless (AppTest) and in a real browser (Playwright)."""
