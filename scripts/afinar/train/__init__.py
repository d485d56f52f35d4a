"""train stage"""
