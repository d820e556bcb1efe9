# Debian package of the command line and the desktop app.
set(CPACK_PACKAGE_NAME "lrq-workbench")
set(CPACK_PACKAGE_VENDOR "LRQ Workbench developers")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "Desktop workbench for low-rank quantization of language models")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_GENERATOR "DEB")
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "LRQ Workbench developers <dev@lrq-workbench.local>")
set(CPACK_DEBIAN_PACKAGE_SECTION "science")
set(CPACK_DEBIAN_PACKAGE_DEPENDS
    "libtorch1.13, libopenblas0-openmp, libqt6widgets6, libqt6printsupport6, libqcustomplot2.1-qt6, libspdlog1.10, libpcre2-8-0, libsqlite3-0, zlib1g, python3, python3-pip")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
if(LRQ_BUILD_GUI)
  install(FILES ${PROJECT_SOURCE_DIR}/packaging/lrq-workbench.desktop
          DESTINATION share/applications OPTIONAL)
  install(FILES ${PROJECT_SOURCE_DIR}/resources/icons/lrq-workbench.svg
          DESTINATION share/icons/hicolor/scalable/apps OPTIONAL)
endif()
include(CPack)
