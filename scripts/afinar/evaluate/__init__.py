"""evaluate stage"""
