"""predict stage"""
