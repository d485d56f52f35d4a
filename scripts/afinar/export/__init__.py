"""export stage"""
